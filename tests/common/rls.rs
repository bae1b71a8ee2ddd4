//! A rate limit service for cluster mode: Kuadrant Limitador (`limitador-server`) over a Redis
//! (`redis-server`), each a child process on free loopback ports, stopped when dropped.
//!
//! Limitador is the binary `scripts/limitador.sh` built (once per machine, into a cache
//! outside the checkout), or `$LIMITADOR_SERVER`; Redis is Debian's `redis-server`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use super::{free_port, http_request, manifest_dir, wait_until, TempDir, WAIT};

/// The limits file the project ships (`envoy/limitador/limits.yaml`).
pub fn shipped_limits() -> PathBuf {
    manifest_dir().join("envoy/limitador/limits.yaml")
}

/// The `limitador-server` binary, or why there is none.
pub fn limitador_bin() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("LIMITADOR_SERVER") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("LIMITADOR_SERVER={} is not a file", path.display()))
        };
    }
    let output = Command::new(manifest_dir().join("scripts/limitador.sh"))
        .arg("--path")
        .output()
        .map_err(|e| format!("scripts/limitador.sh: {e}"))?;
    if !output.status.success() {
        return Err(
            "limitador-server is not built: run `scripts/limitador.sh` (make setup does)".into(),
        );
    }
    Ok(PathBuf::from(
        String::from_utf8_lossy(&output.stdout).trim(),
    ))
}

/// Whether `redis-server` can be started, or why not.
pub fn redis_available() -> Result<(), String> {
    match Command::new("redis-server").arg("--version").output() {
        Ok(output) if output.status.success() => Ok(()),
        _ => Err("redis-server not found (Debian: apt-get install redis-server)".into()),
    }
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{name} {}", child.id());
}

/// A Redis server without persistence on a free loopback port.
pub struct Redis {
    port: u16,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Redis {
        let mut redis = Redis {
            port: free_port(),
            child: None,
        };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops it; its data is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop(&mut child);
        }
    }

    /// Starts it again on the same port (empty).
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let port = self.port;
        wait_until("redis-server to answer PING", WAIT, || {
            ping(port).is_some_and(|answer| answer.starts_with("+PONG"))
        });
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn ping(port: u16) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    stream.write_all(b"PING\r\n").ok()?;
    let mut buf = [0u8; 16];
    let n = stream.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Limitador with `limits` and Redis storage (`redis`, not `redis_cached`: every hit is
/// counted in Redis before the answer).
pub struct Limitador {
    bin: PathBuf,
    limits: PathBuf,
    redis_url: String,
    rls_port: u16,
    http_port: u16,
    child: Option<Child>,
    dir: TempDir,
}

impl Limitador {
    pub fn start(bin: &Path, limits: &Path, redis: &Redis) -> Limitador {
        let mut limitador = Limitador {
            bin: bin.to_path_buf(),
            limits: limits.to_path_buf(),
            redis_url: redis.url(),
            rls_port: free_port(),
            http_port: free_port(),
            child: None,
            dir: TempDir::new("negcache-limitador"),
        };
        limitador.restart();
        limitador
    }

    pub fn rls_port(&self) -> u16 {
        self.rls_port
    }

    /// Starts it again on the same ports.
    pub fn restart(&mut self) {
        self.kill();
        let log = std::fs::File::create(self.dir.path().join("limitador.log")).expect("log");
        let child = Command::new(&self.bin)
            .args(["-b", "127.0.0.1", "-p", &self.rls_port.to_string()])
            .args(["-B", "127.0.0.1", "-P", &self.http_port.to_string()])
            .arg(&self.limits)
            .args(["redis", &self.redis_url])
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start limitador-server");
        self.child = Some(child);
        let (rls, http) = (self.rls_port, self.http_port);
        wait_until("limitador to listen", WAIT, || {
            TcpStream::connect(("127.0.0.1", rls)).is_ok()
                && TcpStream::connect(("127.0.0.1", http)).is_ok()
        });
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop(&mut child);
        }
    }

    /// Freezes it (SIGSTOP): connections are accepted by the kernel, nothing is answered.
    pub fn freeze(&self) {
        signal(self.child.as_ref().expect("running"), "STOP");
    }

    pub fn thaw(&self) {
        signal(self.child.as_ref().expect("running"), "CONT");
    }

    /// `ShouldRateLimit` calls it answered for `namespace`, from its Prometheus metrics:
    /// `authorized_calls` + `limited_calls`.
    pub fn calls(&self, namespace: &str) -> u64 {
        let metrics = http_request(self.http_port, "GET", "/metrics", &[], b"");
        assert_eq!(metrics.status, 200, "limitador /metrics");
        let label = format!("limitador_namespace=\"{namespace}\"");
        metrics
            .body_str()
            .lines()
            .filter(|line| {
                (line.starts_with("authorized_calls{") || line.starts_with("limited_calls{"))
                    && line.contains(&label)
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|value| value as u64)
            .sum()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("limitador.log")).unwrap_or_default()
    }
}

impl Drop for Limitador {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A frozen process cannot die of SIGKILL until it runs again on some systems.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
        }
        self.kill();
    }
}

/// The Envoy cluster `name` reaching a rate limit service on `port` over HTTP/2, as the
/// shipped `envoy/envoy-cluster.yaml` declares it.
pub fn rls_cluster(name: &str, port: u16) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}
            }
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": "127.0.0.1",
                "port_value": port
            }}}}]}]
        }
    })
}
