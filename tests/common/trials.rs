//! Trials for the test files that are their own harness (libtest-mimic, `harness = false`):
//! libtest cannot decide at run time that a test is ignored, and a test that cannot run here
//! must say so, never pass.

use libtest_mimic::{Completion, Failed, Trial};

/// What a trial needs from the machine: found (`Ok`), or why not and how to get it (`Err`).
pub type Needs<T> = Result<T, String>;

/// A trial that runs `body` with what it needs. Where that is missing it reports itself
/// ignored, except under CI (`CI` set, where `.ci/run` installs everything): there it fails.
pub fn needing<T, F>(name: &str, needs: &Needs<T>, body: F) -> Trial
where
    T: Clone + Send + 'static,
    F: FnOnce(T) + Send + 'static,
{
    let needs = needs.clone();
    Trial::ignorable_test(name, move || match needs {
        Ok(found) => {
            body(found);
            Ok(Completion::Completed)
        }
        Err(why) if std::env::var_os("CI").is_some() => {
            Err(Failed::from(format!("required under CI: {why}")))
        }
        Err(why) => Ok(Completion::ignored_with(why)),
    })
}

/// A trial that needs nothing the other tests do not.
pub fn plain(name: &str, body: fn()) -> Trial {
    Trial::test(name, move || {
        body();
        Ok(())
    })
}
