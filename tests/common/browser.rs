//! Headless Chromium driven through chromedriver's WebDriver HTTP API, for the
//! browser tests (tests/dashboard.rs, tests/browser_client.rs).
//!
//! Needs Debian's `chromium` and `chromium-driver` (.ci/run installs them).
//! Without them a test fails when CI=true and is skipped (with a note)
//! otherwise: see [`browser_available`].

use super::unique_dir;
use super::web::http_request_timeout;
use serde_json::{json, Value};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// W3C WebDriver's key for element references.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// Browser start-up and page actions are slower than broker replies.
pub const DRIVER_TIMEOUT: Duration = Duration::from_secs(60);

/// A chromedriver process and one browser session; both end on drop.
pub struct Driver {
    child: Child,
    addr: SocketAddr,
    session: Option<String>,
    log: PathBuf,
}

impl Driver {
    pub fn start() -> Driver {
        Driver::start_with(&[])
    }

    /// Starts chromedriver and a browser session with `extra` Chromium flags.
    pub fn start_with(extra: &[&str]) -> Driver {
        // A free port for chromedriver (it has no "port 0" mode that reports back).
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log = unique_dir("chromedriver").join("chromedriver.log");
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}"));
        let mut d = Driver {
            child,
            addr,
            session: None,
            log,
        };
        let deadline = Instant::now() + DRIVER_TIMEOUT;
        loop {
            if std::net::TcpStream::connect(addr).is_ok() {
                let r = d.call("GET", "/status", None);
                if r["value"]["ready"] == json!(true) {
                    break;
                }
            }
            if let Ok(Some(st)) = d.child.try_wait() {
                panic!("chromedriver exited with {st}\n{}", d.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver not ready within {DRIVER_TIMEOUT:?}\n{}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut args = vec![
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--window-size=1400,1300",
            "--force-device-scale-factor=1",
            "--hide-scrollbars",
        ];
        args.extend_from_slice(extra);
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "goog:chromeOptions": {
                        "binary": CHROMIUM,
                        "args": args
                    }
                }
            }
        });
        let r = d.call("POST", "/session", Some(&caps));
        let id = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {r}\n{}", d.log_text()))
            .to_string();
        d.session = Some(id);
        let ms = DRIVER_TIMEOUT.as_millis() as u64;
        d.call(
            "POST",
            &d.session_path("/timeouts"),
            Some(&json!({ "script": ms })),
        );
        d
    }

    pub fn log_text(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(60)..];
        format!("---- chromedriver log (tail) ----\n{}", tail.join("\n"))
    }

    /// One WebDriver command; a WebDriver error fails the test.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let bytes = body.map(|b| b.to_string().into_bytes());
        let r = http_request_timeout(
            self.addr,
            method,
            path,
            &[("Content-Type", "application/json; charset=utf-8")],
            bytes.as_deref(),
            DRIVER_TIMEOUT,
        );
        let v: Value = serde_json::from_slice(&r.body).unwrap_or_else(|e| {
            panic!(
                "{method} {path}: not JSON ({e}): {}",
                String::from_utf8_lossy(&r.body)
            )
        });
        assert!(
            r.status == 200,
            "WebDriver {method} {path} failed with {}: {v}",
            r.status
        );
        v
    }

    pub fn session_path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session.as_ref().unwrap())
    }

    pub fn go(&self, url: &str) {
        self.call(
            "POST",
            &self.session_path("/url"),
            Some(&json!({ "url": url })),
        );
    }

    pub fn element(&self, css: &str) -> String {
        let r = self.call(
            "POST",
            &self.session_path("/element"),
            Some(&json!({"using": "css selector", "value": css})),
        );
        r["value"][ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {r}"))
            .to_string()
    }

    pub fn clear(&self, css: &str) {
        let e = self.element(css);
        self.call(
            "POST",
            &self.session_path(&format!("/element/{e}/clear")),
            Some(&json!({})),
        );
    }

    pub fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css);
        self.call(
            "POST",
            &self.session_path(&format!("/element/{e}/value")),
            Some(&json!({ "text": text })),
        );
    }

    pub fn click(&self, css: &str) {
        let e = self.element(css);
        self.call(
            "POST",
            &self.session_path(&format!("/element/{e}/click")),
            Some(&json!({})),
        );
    }

    /// Runs `script` (a function body) in the page and returns its value.
    pub fn js(&self, script: &str) -> Value {
        self.call(
            "POST",
            &self.session_path("/execute/sync"),
            Some(&json!({ "script": script, "args": [] })),
        )["value"]
            .clone()
    }

    /// Runs `script` (a function body whose last argument is the callback
    /// to call with the result) and returns what it passed to the callback.
    /// Bounded by [`DRIVER_TIMEOUT`] (the session's script timeout).
    pub fn js_async(&self, script: &str) -> Value {
        self.call(
            "POST",
            &self.session_path("/execute/async"),
            Some(&json!({ "script": script, "args": [] })),
        )["value"]
            .clone()
    }

    pub fn text(&self, css: &str) -> String {
        self.js(&format!(
            "var e = document.querySelector({}); return e ? e.textContent : null;",
            json!(css)
        ))
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    /// Polls `script` until it returns true (bounded).
    pub fn wait_for(&self, what: &str, script: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.js(script) == json!(true) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not true within {timeout:?} (status line: {:?})",
                self.text("#status-line")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn screenshot_png(&self) -> Vec<u8> {
        let r = self.call("GET", &self.session_path("/screenshot"), None);
        let b64 = r["value"].as_str().expect("screenshot data");
        data_encoding::BASE64
            .decode(b64.as_bytes())
            .expect("screenshot is base64")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_text());
        }
        if let Some(id) = self.session.take() {
            // Best effort: quits the browser cleanly.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                http_request_timeout(
                    self.addr,
                    "DELETE",
                    &format!("/session/{id}"),
                    &[],
                    None,
                    Duration::from_secs(10),
                )
            }));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the browser is installed; without it the test fails on CI and is
/// skipped elsewhere.
pub fn browser_available() -> bool {
    let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "{} not installed: install Debian's `chromium` and `chromium-driver` \
         (apt-get install chromium chromium-driver; .ci/run does this)",
        missing.join(" and ")
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{msg}");
    }
    eprintln!("SKIPPED browser test: {msg}");
    false
}
