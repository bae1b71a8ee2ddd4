//! The Envoy process: started on free ports in its own temp dir and stopped when dropped; its
//! listener (client requests), admin API (stats, metrics), logs and access log; the filter's
//! configuration changed while it runs; `envoy --mode validate`.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::access_log::AccessLogEntry;
use super::bootstrap::{self, lds_path, EnvoyOptions};
use super::client::{connect, format_request, http_request, read_response, try_http_request};
use super::client::{ClientConnection, ClientResponse};
use super::{envoy_bin, free_port, tail, wasm_path, TempDir, WAIT};

/// The filter hands its metric updates to Envoy once a second: a read this long after the
/// requests sees all of them.
pub const METRICS_SETTLE: Duration = Duration::from_millis(1300);

/// A running Envoy (listener and admin on free ports, own temp dir).
/// Dropping it stops Envoy; if the test is panicking, the end of Envoy's
/// log is printed first.
pub struct Envoy {
    child: Child,
    port: u16,
    admin_port: u16,
    log_path: PathBuf,
    access_log_path: PathBuf,
    config_path: PathBuf,
    /// What it was started with; `reconfigure` renders the listener from it.
    opts: EnvoyOptions,
    wasm: PathBuf,
    /// The LDS file's `version_info`; the lock also serializes reconfigures.
    lds_version: Mutex<u64>,
    dir: TempDir,
}

/// Writes `value` as JSON to `path`.
fn write_json(path: &Path, value: &Value) {
    let text = serde_json::to_string_pretty(value).expect("JSON text");
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn read_json(path: &Path) -> Value {
    fs::read_to_string(path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or(Value::Null)
}

impl Envoy {
    /// Starts Envoy and waits until admin `/ready` is 200 and the listener
    /// accepts; panics with the log tail otherwise.
    pub fn start(opts: EnvoyOptions) -> Envoy {
        Envoy::try_start(opts).unwrap_or_else(|log| {
            panic!(
                "Envoy did not start. Its log ends with:\n{}",
                tail(&log, 60)
            )
        })
    }

    /// Like `start`, but a failed start (e.g. a rejected configuration)
    /// returns `Err(whole Envoy log)`.
    pub fn try_start(opts: EnvoyOptions) -> Result<Envoy, String> {
        assert!(
            opts.upstream_port != 0,
            "EnvoyOptions.upstream_port is not set"
        );
        let bin = envoy_bin();
        let wasm = if opts.with_filter {
            opts.wasm.clone().unwrap_or_else(wasm_path)
        } else {
            PathBuf::from("unused.wasm")
        };
        let dir = TempDir::new("negcache-e2e");
        let log_path = dir.path().join("envoy.log");
        let access_log_path = dir.path().join("access.log");
        let config_path = dir.path().join("envoy.json");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port();
            let admin_port = free_port();
            let config = bootstrap::bootstrap(&opts, port, admin_port, &wasm, &access_log_path);
            write_json(&config_path, &config);
            if opts.dynamic_listener {
                let lds = bootstrap::lds(&opts, port, &wasm, &access_log_path, 1);
                write_json(&lds_path(dir.path()), &lds);
            }
            let log = File::create(&log_path).expect("create envoy.log");
            let mut cmd = Command::new(&bin);
            cmd.arg("-c")
                .arg(&config_path)
                .args(["--concurrency", &opts.concurrency.to_string()])
                .args(["--disable-hot-restart", "--log-level", "info"])
                // Access log lines reach the file within ~20 ms.
                .args(["--file-flush-interval-msec", "20"])
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::from(log.try_clone().expect("clone log file")))
                .stderr(Stdio::from(log));
            if let Some(level) = &opts.component_log_level {
                cmd.args(["--component-log-level", level]);
            }
            if opts.dynamic_listener {
                // A replaced listener's old filter chains drain for this
                // long (default 600 s) before they are removed.
                cmd.args(["--drain-time-s", "1"]);
            }
            let mut child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
            match wait_ready(
                &mut child,
                port,
                admin_port,
                &log_path,
                opts.dynamic_listener,
            ) {
                Ok(()) => {
                    return Ok(Envoy {
                        child,
                        port,
                        admin_port,
                        log_path,
                        access_log_path,
                        config_path,
                        opts,
                        wasm,
                        lds_version: Mutex::new(1),
                        dir,
                    })
                }
                Err(log) => {
                    stop_child(&mut child, admin_port);
                    let port_clash =
                        log.contains("Address already in use") || log.contains("cannot bind");
                    if !(port_clash && attempt < 5) {
                        return Err(log);
                    }
                    // Something took a port between free_port() and Envoy's
                    // bind: try other ports.
                }
            }
        }
    }

    /// The Envoy process id (for `/proc/<pid>/stat` and `/proc/<pid>/status`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The listener port (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// This Envoy's temp dir (config, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The bootstrap it was started with.
    pub fn bootstrap(&self) -> Value {
        read_json(&self.config_path)
    }

    /// The LDS file as last written (with `dynamic_listener`), else `Null`.
    pub fn listener_config(&self) -> Value {
        if !self.opts.dynamic_listener {
            return Value::Null;
        }
        read_json(&lds_path(self.dir.path()))
    }

    /// The filter configuration in the LDS file as last written (with `dynamic_listener`),
    /// parsed; `Null` when there is none.
    pub fn listener_plugin_config(&self) -> Value {
        bootstrap::plugin_config_of(&self.listener_config()["resources"][0]).unwrap_or_default()
    }

    /// Whether the Envoy process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    // -- live reconfiguration ----------------------------------------------

    /// Gives the running filter a new configuration (requires
    /// [`EnvoyOptions::dynamic_listener`]): the listener is updated through
    /// LDS with `plugin_config`, the rest unchanged. The wasm VM and its
    /// shared data stay (same `vm_id`, same code); only `on_configure` runs
    /// again, on the main thread and on every worker. Returns once new
    /// connections get the new configuration. Panics with the log tail if
    /// Envoy rejects the update (see [`Envoy::try_reconfigure`]) or it does
    /// not take effect within 20 s.
    ///
    /// Connections kept alive from before may still see the old
    /// configuration until they close (the client's one-shot requests use a
    /// fresh connection each).
    pub fn reconfigure(&self, plugin_config: Value) {
        if let Err(log) = self.try_reconfigure(plugin_config) {
            panic!("Envoy rejected the new listener. Its log ends with:\n{log}");
        }
    }

    /// Like [`Envoy::reconfigure`], but `Err(log tail)` when Envoy rejects
    /// the update (`listener_manager.lds.update_rejected` went up, e.g. the
    /// filter's `on_configure` refused the configuration): the old listener
    /// and configuration keep serving. Still panics if nothing happens
    /// within 20 s.
    pub fn try_reconfigure(&self, plugin_config: Value) -> Result<(), String> {
        assert!(
            self.opts.dynamic_listener,
            "reconfigure needs EnvoyOptions.dynamic_listener"
        );
        let mut version = self.lds_version.lock().expect("lds version lock");
        let success = "listener_manager.lds.update_success";
        let rejected = "listener_manager.lds.update_rejected";
        let modified = "listener_manager.listener_modified";
        // Once per worker each time a worker has taken a listener.
        let created = "listener_manager.listener_create_success";
        let (success0, rejected0, modified0, created0) = (
            self.stat(success),
            self.stat(rejected),
            self.stat(modified),
            self.stat(created),
        );
        let workers = self.stat("server.concurrency");

        *version += 1;
        let opts = EnvoyOptions {
            plugin_config,
            plugin_config_raw: None,
            ..self.opts.clone()
        };
        let lds = bootstrap::lds(
            &opts,
            self.port,
            &self.wasm,
            &self.access_log_path,
            *version,
        );
        // Envoy reloads on a file moved into the watched dir: write aside,
        // then rename over the listener file.
        let path = lds_path(self.dir.path());
        let aside = path.with_extension("json.tmp");
        write_json(&aside, &lds);
        fs::rename(&aside, &path).expect("rename listeners.json.tmp");

        let timeout = Duration::from_secs(20);
        let deadline = Instant::now() + timeout;
        let mut state = String::new();
        loop {
            let stat = |name: &str| {
                admin_stat(self.admin_port, name).unwrap_or_else(|e| {
                    panic!(
                        "reconfigure: admin API gone ({e}). Envoy's log ends with:\n{}",
                        tail(&self.log(), 60)
                    )
                })
            };
            if stat(rejected) > rejected0 {
                return Err(tail(&self.log(), 40));
            }
            // `listener_modified` goes up before `update_success` does.
            if stat(success) > success0 {
                if stat(modified) == modified0 {
                    return Ok(()); // same listener as before: nothing to do
                }
                let (warming, active, created) = (
                    stat("listener_manager.total_listeners_warming"),
                    stat("listener_manager.total_listeners_active"),
                    stat(created),
                );
                if warming == 0 && active == 1 && created >= created0 + workers {
                    return Ok(());
                }
                state = format!(
                    "warming {warming}, active {active}, \
                     {} of {workers} workers took the listener",
                    created - created0
                );
            }
            assert!(
                Instant::now() < deadline,
                "reconfigure: LDS update {} not in effect after {timeout:?} ({}). \
                 Envoy's log ends with:\n{}",
                *version,
                if state.is_empty() {
                    "not applied"
                } else {
                    &state
                },
                tail(&self.log(), 60)
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    // -- client ------------------------------------------------------------

    /// One request on a fresh connection (`connection: close`).
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> ClientResponse {
        http_request(self.port, method, path, headers, b"")
    }

    pub fn request_with_body(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> ClientResponse {
        http_request(self.port, method, path, headers, body)
    }

    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> ClientResponse {
        self.request("GET", path, headers)
    }

    /// The same GET twice: the first reaches the upstream (no `x-negcache`) and is stored, the
    /// second is the stored reply (`x-negcache: hit`, same status). Returns both.
    pub fn miss_then_hit(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (ClientResponse, ClientResponse) {
        let miss = self.get(path, headers);
        assert_eq!(miss.negcache(), None, "first GET {path}: {miss:?}");
        let hit = self.get(path, headers);
        assert_eq!(
            (hit.status, hit.negcache()),
            (miss.status, Some("hit")),
            "second GET {path}: {hit:?}"
        );
        (miss, hit)
    }

    /// A keep-alive connection to the listener.
    pub fn connect(&self) -> ClientConnection {
        ClientConnection::open(self.port)
    }

    /// Sends `raw` as is on a fresh connection and reads one response.
    pub fn request_raw(&self, raw: &[u8]) -> ClientResponse {
        let stream = connect(self.port);
        let mut out = stream.try_clone().expect("clone stream");
        out.write_all(raw).expect("send raw request");
        read_response(&mut std::io::BufReader::new(stream), false)
            .unwrap_or_else(|e| panic!("read response to raw request: {e}"))
    }

    /// Sends `raw` as is and returns every byte received until the server
    /// closes the connection (or 5 s pass).
    pub fn send_raw(&self, raw: &[u8]) -> Vec<u8> {
        let mut stream = connect(self.port);
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        stream.write_all(raw).expect("send raw request");
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    }

    // -- admin -------------------------------------------------------------

    /// GET on the admin API.
    pub fn admin(&self, path: &str) -> ClientResponse {
        http_request(self.admin_port, "GET", path, &[], b"")
    }

    /// POST on the admin API (e.g. `/reset_counters`).
    pub fn admin_post(&self, path: &str) -> ClientResponse {
        http_request(self.admin_port, "POST", path, &[], b"")
    }

    /// A counter or gauge by its full name (`wasmcustom.negcache_hits_total`,
    /// `http.ingress_http.downstream_rq_total`); 0 when absent.
    pub fn stat(&self, name: &str) -> u64 {
        admin_stat(self.admin_port, name).unwrap_or_else(|e| panic!("admin /stats: {e}"))
    }

    /// A filter metric once the filter has handed Envoy its updates: waits one flush period
    /// (`METRICS_SETTLE`), then reads it.
    pub fn metric(&self, name: &str) -> u64 {
        thread::sleep(METRICS_SETTLE);
        self.metric_now(name)
    }

    /// A filter metric as Envoy holds it right now: `stat("wasmcustom.<name>")`.
    pub fn metric_now(&self, name: &str) -> u64 {
        self.stat(&format!("wasmcustom.{name}"))
    }

    /// Waits until `metric(name) == expected` (filters may update metrics
    /// after the response was sent); panics with the last value otherwise.
    pub fn wait_metric(&self, name: &str, expected: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let value = self.metric_now(name);
            if value == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "metric {name} is {value}, expected {expected}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// All stats, `name: value` per line.
    pub fn stats_text(&self) -> String {
        self.admin("/stats").body_str()
    }

    /// `/stats/prometheus`.
    pub fn prometheus(&self) -> String {
        let resp = self.admin("/stats/prometheus");
        assert_eq!(resp.status, 200, "admin /stats/prometheus");
        resp.body_str()
    }

    /// Downstream connections accepted by worker 0 and worker 1.
    pub fn worker_connections(&self) -> (u64, u64) {
        let stat = |w: u32| {
            self.stat(&format!(
                "listener.127.0.0.1_{}.worker_{w}.downstream_cx_total",
                self.port
            ))
        };
        (stat(0), stat(1))
    }

    // -- logs --------------------------------------------------------------

    /// Envoy's whole log (stdout and stderr).
    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }

    /// Waits until Envoy's log contains `needle`; returns the log.
    pub fn wait_log_contains(&self, needle: &str) -> String {
        let mut log = String::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            log = self.log();
            if log.contains(needle) {
                return log;
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "Envoy log never contained {needle:?}; it ends with:\n{}",
            tail(&log, 40)
        );
    }

    /// The access log as written so far (one JSON object per line).
    pub fn access_log(&self) -> String {
        fs::read_to_string(&self.access_log_path).unwrap_or_default()
    }

    pub fn access_log_entries(&self) -> Vec<AccessLogEntry> {
        self.access_log()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(AccessLogEntry::parse)
            .collect()
    }

    /// Waits until the access log has at least `n` entries (lines are
    /// written when a stream ends, after the client got its response).
    pub fn wait_access_log(&self, n: usize) -> Vec<AccessLogEntry> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let entries = self.access_log_entries();
            if entries.len() >= n {
                return entries;
            }
            assert!(
                Instant::now() < deadline,
                "access log has {} entries, expected {n}:\n{}",
                entries.len(),
                self.access_log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The access log entry of the `n`-th request (from 1; requests sent one after another),
    /// once it is written.
    pub fn access_entry(&self, n: usize) -> AccessLogEntry {
        assert!(n > 0, "access_entry counts from 1");
        self.wait_access_log(n).swap_remove(n - 1)
    }

    /// How many of the first `n` requests' access log lines show `decision`.
    pub fn count_decisions(&self, n: usize, decision: &str) -> usize {
        self.wait_access_log(n)
            .iter()
            .take(n)
            .filter(|entry| entry.decision.as_deref() == Some(decision))
            .count()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "--- Envoy log ({}), last lines ---\n{}\n--- access log ---\n{}",
                self.log_path.display(),
                tail(&self.log(), 40),
                tail(&self.access_log(), 20)
            );
        }
        stop_child(&mut self.child, self.admin_port);
    }
}

fn read_log(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

/// A stat by its full name from the admin API on `admin_port` (0 when
/// absent); `Err` when the admin API does not answer.
fn admin_stat(admin_port: u16, name: &str) -> Result<u64, String> {
    let mut regex = String::from("^");
    for c in name.chars() {
        if !c.is_ascii_alphanumeric() && c != '_' {
            regex.push('\\');
        }
        regex.push(c);
    }
    regex.push('$');
    let path = format!("/stats?filter={}", percent_encode(&regex));
    let resp = try_http_request(admin_port, "GET", &path)
        .map_err(|e| format!("GET {path} on :{admin_port}: {e}"))?;
    if resp.status != 200 {
        return Err(format!("GET {path}: {} {}", resp.status, resp.body_str()));
    }
    Ok(resp
        .body_str()
        .lines()
        .filter_map(|line| line.split_once(": "))
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0))
}

/// Waits until admin `/ready` is 200 and the listener accepts; `Err(log)`
/// if Envoy exits, rejects its LDS listener (`dynamic`) or is not ready in
/// time.
fn wait_ready(
    child: &mut Child,
    port: u16,
    admin_port: u16,
    log: &Path,
    dynamic: bool,
) -> Result<(), String> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{}\n[envoy exited: {status}]", read_log(log)));
        }
        let admin_ready =
            try_http_request(admin_port, "GET", "/ready").is_ok_and(|r| r.status == 200);
        if admin_ready {
            if !dynamic {
                // A static listener that cannot bind makes Envoy exit.
                if listener_accepts(port) {
                    return Ok(());
                }
            } else {
                // A rejected LDS listener (e.g. its port is taken) does not
                // stop Envoy: it runs on without one, and what accepts on
                // the port may be someone else.
                let stat = |name| admin_stat(admin_port, name).unwrap_or(0);
                if stat("listener_manager.lds.update_rejected") > 0 {
                    return Err(format!("{}\n[listener rejected]", read_log(log)));
                }
                if stat("listener_manager.total_listeners_active") == 1 && listener_accepts(port) {
                    return Ok(());
                }
            }
        }
        if Instant::now() > deadline {
            return Err(format!("{}\n[not ready after {WAIT:?}]", read_log(log)));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn listener_accepts(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

/// Stops Envoy: admin `/quitquitquit` (a graceful exit, like SIGTERM), then
/// SIGKILL if it is still running after 5 s.
fn stop_child(child: &mut Child, admin_port: u16) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let addr = SocketAddr::from(([127, 0, 0, 1], admin_port));
    if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = s.write_all(&format_request("POST", "/quitquitquit", &[], b"", true));
        let _ = s.read_to_end(&mut Vec::new());
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Config validation (`envoy --mode validate`)
// ---------------------------------------------------------------------------

/// Runs `envoy --mode validate -c <config>` with cwd = the config's
/// directory. Returns (success, stdout + stderr). The filter's
/// `on_configure` runs under validate, so its log lines are in the output.
pub fn envoy_validate(config: &Path) -> (bool, String) {
    let dir = config
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let out = Command::new(envoy_bin())
        .args(["--mode", "validate", "-c"])
        .arg(config)
        .args(["--disable-hot-restart", "--log-level", "info"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run envoy --mode validate");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Writes a test bootstrap whose filter gets `plugin_json` verbatim to
/// `<dir>/envoy.json` and returns its path.
pub fn write_plugin_bootstrap(dir: &Path, plugin_json: &str) -> PathBuf {
    let opts = EnvoyOptions {
        plugin_config_raw: Some(plugin_json.to_string()),
        upstream_port: 1,
        ..EnvoyOptions::default()
    };
    let path = dir.join("envoy.json");
    let config = bootstrap::bootstrap(&opts, 0, 0, &wasm_path(), &dir.join("access.log"));
    write_json(&path, &config);
    path
}

/// Validates the filter configuration `plugin_json` with
/// `envoy --mode validate`: (accepted, Envoy's output).
pub fn validate_plugin_config(plugin_json: &str) -> (bool, String) {
    let dir = TempDir::new("negcache-validate");
    let path = write_plugin_bootstrap(dir.path(), plugin_json);
    envoy_validate(&path)
}
