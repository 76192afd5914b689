//! A compromised service must stay in its box. Each test runs a real agent and a real
//! service under the sandbox (busybox, and Debian's python3 for raw netlink) that attacks it
//! the way the review did: links planted where root writes, capabilities aimed at the
//! router's network, floods of output, checks and probes that leave daemons, reads of other
//! instances' secrets, and a system that refuses namespaces altogether.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Agent, Nginx, TempDir, TestNetns, sha256_file, write_catalogue};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(90);

fn www_with_busybox(root: &TempDir) -> PathBuf {
    let www = root.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::copy("/bin/busybox", www.join("busybox")).unwrap();
    www
}

/// A busybox feature running `sh -c script` (extra positional arguments follow), healthy
/// once `port` answers.
fn busybox(
    nginx: &Nginx,
    www: &Path,
    id: &str,
    script: &str,
    rest: &[&str],
    extra: Value,
) -> Value {
    let mut args = vec![json!("sh"), json!("-c"), json!(script), json!("sh")];
    args.extend(rest.iter().map(|a| json!(a)));
    let mut service = json!({ "args": args });
    if let (Some(s), Some(e)) = (service.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    json!({ "id": id, "name": id, "version": "1", "binary": "busybox", "service": service,
            "assets": { "x86_64": { "url": nginx.url("busybox"), "sha256": sha256_file(&www.join("busybox")) } } })
}

fn logs(agent: &Agent, id: &str) -> Vec<String> {
    agent.data(
        "query($id: ID!) { instanceLogs(id: $id, tail: 200) }",
        json!({ "id": id }),
    )["instanceLogs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_owned())
        .collect()
}

/// Waits for the service to print `DONE`; returns its lines.
fn report(agent: &Agent, id: &str) -> Vec<String> {
    let mut out = Vec::new();
    common::wait_until(&format!("the report of {id}"), TIMEOUT, || {
        out = logs(agent, id);
        out.iter().any(|l| l == "DONE")
    });
    out
}

fn field(out: &[String], key: &str) -> String {
    out.iter()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {out:?}"))
        .trim()
        .to_owned()
}

fn health_answers_within(agent: &Agent, limit: Duration) -> bool {
    let start = Instant::now();
    let url = format!("http://127.0.0.1:{}/health", agent.port);
    let agent_ = ureq::Agent::config_builder()
        .timeout_global(Some(limit))
        .build();
    let ok = ureq::Agent::from(agent_).get(&url).call().is_ok();
    ok && start.elapsed() <= limit
}

#[test]
fn root_never_writes_through_links_or_blocks_on_fifos_in_a_service_log_dir() {
    let root = TempDir::new("sbx-logs");
    let www = www_with_busybox(&root);
    let nginx = Nginx::start(&www, "");
    let victim = root.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    let port = common::free_port();
    // The attack as a compromised service makes it: once the test tells it where its log
    // directory is, plant a link to a root file and a FIFO at the log's names.
    let script = format!(
        "while [ ! -f target ]; do sleep 0.2; done; L=$(cat target); \
         ln -sf {v} \"$L/service.log\" 2>/dev/null && echo LINK=planted || echo LINK=refused; \
         mkfifo \"$L/service.log.1\" 2>/dev/null && echo FIFO=planted || echo FIFO=refused; \
         echo DONE; exec httpd -f -p 127.0.0.1:{port}",
        v = victim.display()
    );
    let catalogue = write_catalogue(
        root.path(),
        &[busybox(
            &nginx,
            &www,
            "web",
            &script,
            &[],
            json!({ "health": { "tcp": port } }),
        )],
    );
    let mut agent = Agent::start(
        root.path(),
        &catalogue,
        "[supervisor]\nstartup_timeout_secs = 60\n",
    );
    let id = agent.install("web", "w");
    let logs_dir = agent.data_dir.join(format!("instances/{id}/logs"));
    let data = agent.data_dir.join(format!("instances/{id}/data"));
    common::wait_until("the data dir", TIMEOUT, || data.exists());
    std::fs::write(data.join("target"), logs_dir.display().to_string()).unwrap();
    let out = report(&agent, &id);
    assert_eq!(field(&out, "LINK="), "refused", "{out:?}");
    assert_eq!(field(&out, "FIFO="), "refused", "{out:?}");
    agent.wait_status(&id, &["RUNNING"], TIMEOUT);
    let meta = std::fs::metadata(&logs_dir).unwrap();
    assert_eq!((meta.uid(), meta.permissions().mode() & 0o777), (0, 0o700));

    // What an older agent left: the directory was the service's, so a link to a root file
    // and a FIFO may sit at the log's names. The next start neither follows nor blocks.
    let uid = std::fs::metadata(&data).unwrap().uid();
    std::fs::remove_file(logs_dir.join("service.log")).unwrap();
    std::os::unix::fs::symlink(&victim, logs_dir.join("service.log")).unwrap();
    nix::unistd::mkfifo(
        &logs_dir.join("service.log.1"),
        nix::sys::stat::Mode::S_IRWXU,
    )
    .unwrap();
    std::os::unix::fs::chown(&logs_dir, Some(uid), Some(uid)).unwrap();
    std::fs::set_permissions(&logs_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    agent.kill9();
    agent.restart();
    agent.wait_status(&id, &["RUNNING"], TIMEOUT);
    common::wait_until("the restarted service to report", TIMEOUT, || {
        logs(&agent, &id).iter().any(|l| l == "DONE")
    });
    // The log tail (which blocked the runtime on such a FIFO) answers, and so does /health.
    assert!(health_answers_within(&agent, Duration::from_secs(2)));
    assert!(!logs(&agent, &id).is_empty());
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    let meta = std::fs::symlink_metadata(logs_dir.join("service.log")).unwrap();
    assert!(meta.file_type().is_file() && meta.uid() == 0, "{meta:?}");
    assert!(
        std::fs::symlink_metadata(logs_dir.join("service.log.1"))
            .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound),
        "the FIFO is gone"
    );
    let meta = std::fs::metadata(&logs_dir).unwrap();
    assert_eq!((meta.uid(), meta.permissions().mode() & 0o777), (0, 0o700));
    // Restarts and rotation reopen the log relative to the directory: still nothing
    // written through.
    let r = agent.gql(
        "mutation($id: ID!) { restartInstance(id: $id) { status } }",
        json!({ "id": id }),
    );
    assert!(r["errors"].is_null(), "{r}");
    agent.wait_status(&id, &["RUNNING"], TIMEOUT);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    agent.uninstall(&id);
}

/// Raw rtnetlink from inside the service: the review's attack through the veth's netnsid
/// (list, delete and create links in the router's namespace), and, as the control, a link
/// made in the service's own namespace. Prints `NAME=errno` (0 is success).
const NETLINK_ATTACK: &str = r#"
import socket, struct
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
REQ, ACK, DUMP, CREATE, EXCL = 1, 4, 0x300, 0x400, 0x200
IFNAME, LINK, LINKINFO, KIND, LINK_NETNSID, TARGET_NETNSID = 3, 5, 18, 1, 37, 46
def attr(t, d):
    n = 4 + len(d)
    return struct.pack('HH', n, t) + d + b'\0' * ((4 - n % 4) % 4)
def ifi(index=0):
    return struct.pack('BxHiII', 0, 0, index, 0, 0)
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
s.bind((0, 0))
seq = [0]
def talk(kind, flags, body):
    seq[0] += 1
    s.send(struct.pack('IHHII', 16 + len(body), kind, flags, seq[0], 0) + body)
    rows = []
    while True:
        data = s.recv(1 << 16)
        off = 0
        while off < len(data):
            n, t = struct.unpack_from('IH', data, off)
            if t in (2, 3):
                return (struct.unpack_from('i', data, off + 16)[0] if n >= 20 else 0), rows
            rows.append(data[off:off + n])
            off += (n + 3) & ~3
def attrs(m):
    out, off = {}, 32
    while off + 4 <= len(m):
        n, t = struct.unpack_from('HH', m, off)
        if n < 4:
            break
        out[t & 0x3fff] = m[off + 4:off + n]
        off += (n + 3) & ~3
    return out
err, own = talk(RTM_GETLINK, REQ | DUMP, ifi())
nsid = peer = None
for m in own:
    a = attrs(m)
    if a.get(IFNAME, b'').rstrip(b'\0') == b'eth0':
        nsid = struct.unpack('i', a[LINK_NETNSID])[0]
        peer = struct.unpack('i', a[LINK])[0]
print('NSID=%s' % nsid, flush=True)
target = attr(TARGET_NETNSID, struct.pack('i', nsid))
err, rows = talk(RTM_GETLINK, REQ | DUMP, ifi() + target)
print('HOSTLIST=%d' % err, 'ROWS=%d' % len(rows), flush=True)
err, _ = talk(RTM_DELLINK, REQ | ACK, ifi(peer) + target)
print('HOSTDEL=%d' % err, flush=True)
veth = attr(LINKINFO, attr(KIND, b'veth\0'))
err, _ = talk(RTM_NEWLINK, REQ | ACK | CREATE | EXCL, ifi() + attr(IFNAME, b'nncevil0\0') + veth + target)
print('HOSTNEW=%d' % err, flush=True)
err, _ = talk(RTM_NEWLINK, REQ | ACK | CREATE | EXCL, ifi() + attr(IFNAME, b'own0\0') + veth)
print('OWNNEW=%d' % err, flush=True)
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
print('USERNS=%d' % (0 if libc.unshare(0x10000000) == 0 else -ctypes.get_errno()), flush=True)
print('DONE', flush=True)
"#;

#[test]
fn capabilities_work_in_the_services_own_network_and_nowhere_else() {
    let root = TempDir::new("sbx-caps");
    let ns = TestNetns::new("caps");
    let www = www_with_busybox(&root);
    let nginx = Nginx::start_in(&www, "", Some(&ns));
    let script = "python3 -c \"$1\"; exec httpd -f -p 7000";
    let with_cap = busybox(
        &nginx,
        &www,
        "admin",
        script,
        &[NETLINK_ATTACK],
        json!({ "health": { "tcp": 7000 }, "capabilities": ["CAP_NET_ADMIN"] }),
    );
    let without = busybox(
        &nginx,
        &www,
        "plain",
        script,
        &[NETLINK_ATTACK],
        json!({ "health": { "tcp": 7000 } }),
    );
    let catalogue = write_catalogue(root.path(), &[with_cap, without]);
    let toml = format!(
        "[vlan]\nmode = \"veth\"\nnetns_dir = {:?}\nrt_tables = {:?}\n",
        root.path().join("netns").display().to_string(),
        root.path().join("rt_tables").display().to_string()
    );
    let agent = Agent::start_in(
        &root.path().join("agent"),
        &catalogue,
        &toml,
        Some(&ns),
        &[],
    );
    let links_before = ns.ip(&["-br", "link"]);
    let running = |feature: &str, name: &str| {
        let id = agent.install(feature, name);
        let p = agent.wait_status(&id, &["RUNNING", "FAILED"], TIMEOUT);
        assert_eq!(p["status"], "RUNNING", "{p}\n{}", agent.log());
        id
    };
    let admin = running("admin", "a");
    let plain = running("plain", "p");
    let eperm = (-libc::EPERM).to_string();
    let a = report(&agent, &admin);
    assert_ne!(field(&a, "NSID="), "None", "{a:?}");
    for key in ["HOSTLIST=", "HOSTDEL=", "HOSTNEW="] {
        assert!(
            field(&a, key).starts_with(&eperm),
            "with CAP_NET_ADMIN, {key} must fail with EPERM outside its namespace: {a:?}"
        );
    }
    assert_eq!(
        field(&a, "OWNNEW="),
        "0",
        "the capability does work in its own namespace: {a:?}"
    );
    // Neither can make a user namespace of its own (which would give it every capability
    // over namespaces it then makes): the limit below its own is 0.
    assert_eq!(field(&a, "USERNS="), (-libc::ENOSPC).to_string(), "{a:?}");
    let p = report(&agent, &plain);
    assert_eq!(field(&p, "USERNS="), (-libc::ENOSPC).to_string(), "{p:?}");
    for key in ["HOSTLIST=", "HOSTDEL=", "HOSTNEW=", "OWNNEW="] {
        assert!(field(&p, key).starts_with(&eperm), "{key}: {p:?}");
    }
    // The router's links are as they were (plus the two instances' own), none deleted.
    let links_after = ns.ip(&["-br", "link"]);
    assert!(!links_after.contains("nncevil0"), "{links_after}");
    for line in links_before.lines() {
        let name = line.split_whitespace().next().unwrap();
        assert!(links_after.contains(name), "{name} vanished: {links_after}");
    }
    let isolation = agent.data(
        "query($id: ID!) { instance(id: $id) { isolation { applied } } }",
        json!({ "id": admin }),
    );
    let applied = isolation["instance"]["isolation"]["applied"].to_string();
    assert!(
        applied.contains("user namespace owning its network"),
        "{applied}"
    );
    agent.uninstall(&admin);
    agent.uninstall(&plain);
}

#[test]
fn a_flood_of_output_neither_blocks_nor_bloats_the_agent() {
    let root = TempDir::new("sbx-flood");
    let www = www_with_busybox(&root);
    let nginx = Nginx::start(&www, "");
    let port = common::free_port();
    let script = format!(
        "echo before; head -c 200000000 /dev/zero | tr '\\0' x; echo; echo after; \
         printf '\\377\\376 not utf-8\\n'; echo DONE; exec httpd -f -p 127.0.0.1:{port}"
    );
    let catalogue = write_catalogue(
        root.path(),
        &[busybox(
            &nginx,
            &www,
            "flood",
            &script,
            &[],
            json!({ "health": { "tcp": port } }),
        )],
    );
    let agent = Agent::start(root.path(), &catalogue, "");
    let idle = common::proc_status_kib(agent.pid(), "VmHWM:");
    let id = agent.install("flood", "f");
    let lines = report(&agent, &id);
    agent.wait_status(&id, &["RUNNING"], TIMEOUT);
    assert!(health_answers_within(&agent, Duration::from_secs(2)));
    let peak = common::proc_status_kib(agent.pid(), "VmHWM:");
    eprintln!("agent VmHWM: idle {idle} KiB, after a 200 MB line {peak} KiB");
    assert!(
        peak < idle + 24 * 1024,
        "the agent grew from {idle} KiB to {peak} KiB under a 200 MB line"
    );
    let at = |s: &str| {
        lines
            .iter()
            .position(|l| l.contains(s))
            .unwrap_or_else(|| panic!("{s} in {lines:?}"))
    };
    assert!(at("before") < at("line longer than 4096 bytes: cut"));
    assert!(
        lines
            .iter()
            .any(|l| l == "[nnc-agent: dropped the last 199995904 bytes of that line]"),
        "{lines:?}"
    );
    assert!(at("dropped the last") < at("after"));
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\u{fffd}\u{fffd} not utf-8")),
        "{lines:?}"
    );
    agent.uninstall(&id);

    // Bare newlines, as fast as it can print them: the API keeps answering and the excess
    // is counted, not written.
    let port = common::free_port();
    let newlines = format!(
        "httpd -f -p 127.0.0.1:{port} & head -c 30000000 /dev/zero | tr '\\0' '\\n'; sleep 1.5; echo DONE; wait"
    );
    write_catalogue(
        root.path(),
        &[busybox(
            &nginx,
            &www,
            "lines",
            &newlines,
            &[],
            json!({ "health": { "tcp": port } }),
        )],
    );
    agent.data(
        "mutation { reloadCatalogue { catalogueSerial } }",
        json!({}),
    );
    let id = agent.install("lines", "n");
    agent.wait_status(&id, &["RUNNING"], TIMEOUT);
    let mut slowest = Duration::ZERO;
    common::wait_until("the newline flood to end", TIMEOUT, || {
        let t = Instant::now();
        assert!(health_answers_within(&agent, Duration::from_secs(2)));
        slowest = slowest.max(t.elapsed());
        logs(&agent, &id).iter().any(|l| l == "DONE")
    });
    eprintln!("slowest /health during 30 M newlines: {slowest:?}");
    let lines = logs(&agent, &id);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("[nnc-agent: dropped ")
                && l.ends_with(" lines over 2000 a second]")),
        "{lines:?}"
    );
    agent.uninstall(&id);
}

#[test]
fn config_checks_and_exec_probes_run_confined_and_leave_no_daemon() {
    let root = TempDir::new("sbx-check");
    let www = www_with_busybox(&root);
    let nginx = Nginx::start(&www, "");
    let port = common::free_port();
    let mark = format!("{}", 40_000 + std::process::id() % 20_000);
    // Each reports what it sees into its data directory (its cwd) and leaves a daemon.
    let spy = |tag: &str| {
        format!(
            "{{ echo PID=$$; grep -E '^(CapEff|NoNewPrivs|Uid):' /proc/self/status; echo HOST=$(hostname); \
             ls /proc | grep -c '^[0-9]' | sed 's/^/PROCS=/'; \
             ls {data} >/dev/null 2>&1 && echo AGENT=visible || echo AGENT=hidden; }} > {tag}.report; \
             setsid sleep {mark} >/dev/null 2>&1 < /dev/null & exit 0",
            data = root.path().join("data/catalogue").display()
        )
    };
    let feature = json!({
        "id": "spy", "name": "spy", "version": "1", "binary": "busybox", "config": "sing-box",
        "service": {
            "args": ["sh", "-c", format!("exec httpd -f -p 127.0.0.1:{port}"), "sh", "{config}"],
            "check": ["sh", "-c", spy("check"), "sh", "{config}"],
            "health": { "exec": ["/bin/busybox", "sh", "-c", spy("probe")] }
        },
        "assets": { "x86_64": { "url": nginx.url("busybox"), "sha256": sha256_file(&www.join("busybox")) } }
    });
    let catalogue = write_catalogue(root.path(), &[feature]);
    let agent = Agent::start(
        root.path(),
        &catalogue,
        "[supervisor]\nprobe_interval_secs = 0.5\n",
    );
    let id = agent.install_with("spy", "s", json!({ "mixedPort": common::free_port() }));
    let p = agent.wait_status(&id, &["RUNNING", "FAILED"], TIMEOUT);
    assert_eq!(p["status"], "RUNNING", "{p}\n{}", agent.log());
    let data = agent.data_dir.join(format!("instances/{id}/data"));
    for tag in ["check", "probe"] {
        let text = std::fs::read_to_string(data.join(format!("{tag}.report")))
            .unwrap_or_else(|e| panic!("{tag} report: {e}"));
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        assert_eq!(
            field(&lines, "PID="),
            "1",
            "{tag} in its own PID namespace: {text}"
        );
        assert_eq!(
            field(&lines, "CapEff:"),
            "0000000000000000",
            "{tag}: {text}"
        );
        assert_eq!(field(&lines, "NoNewPrivs:"), "1", "{tag}: {text}");
        assert!(
            field(&lines, "Uid:")
                .split_whitespace()
                .all(|u| u.parse::<u32>().unwrap() >= 61000),
            "{tag} as the service user: {text}"
        );
        assert_eq!(field(&lines, "HOST="), "nnc-spy-s", "{tag}: {text}");
        let procs: u32 = field(&lines, "PROCS=").parse().unwrap();
        assert!(procs <= 6, "{tag} sees only its own processes: {text}");
        assert_eq!(field(&lines, "AGENT="), "hidden", "{tag}: {text}");
    }
    // The daemons the check and the probes started died with them.
    let leftovers = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| {
                std::fs::read(e.path().join("cmdline"))
                    .is_ok_and(|c| c == format!("sleep\0{mark}\0").as_bytes())
            })
            .count()
    };
    // No probe runs once the service is stopped; what the check and the probes started is
    // gone with them.
    agent.data(
        "mutation($id: ID!) { stopInstance(id: $id) { status } }",
        json!({ "id": id }),
    );
    common::wait_until(
        "no daemon left by a check or a probe",
        Duration::from_secs(10),
        || leftovers() == 0,
    );
    agent.uninstall(&id);
}

/// A service that reads what its argument lists once the test hands it the paths, and says
/// which it could read.
const READER: &str = "httpd -f -p 127.0.0.1:$1 & while [ ! -f targets ]; do sleep 0.2; done; \
    for p in $(cat targets); do if [ -d \"$p\" ] && ls \"$p\" >/dev/null 2>&1 || cat \"$p\" >/dev/null 2>&1; then echo READ=$p; else echo DENIED=$p; fi; done; \
    echo DONE; wait";

fn reader(nginx: &Nginx, www: &Path, id: &str, port: u16) -> Value {
    json!({
        "id": id, "name": id, "version": "1", "binary": "busybox", "config": "sing-box",
        "service": {
            "args": ["sh", "-c", READER, "sh", port.to_string()],
            "check": ["true"],
            "health": { "tcp": port }
        },
        "assets": { "x86_64": { "url": nginx.url("busybox"), "sha256": sha256_file(&www.join("busybox")) } }
    })
}

/// Installs two readers; the first tries the second's config, the agent's state, token,
/// catalogue copy and directories. Returns (what it read, the agent).
fn read_secrets(agent: &Agent, nginx: &Nginx, www: &Path) -> Vec<String> {
    let _ = (nginx, www);
    let a = agent.install_with("a", "x", json!({ "mixedPort": common::free_port() }));
    let b = agent.install_with("b", "y", json!({ "mixedPort": common::free_port() }));
    for id in [&a, &b] {
        let p = agent.wait_status(id, &["RUNNING", "FAILED"], TIMEOUT);
        assert_eq!(p["status"], "RUNNING", "{p}\n{}", agent.log());
    }
    let d = &agent.data_dir;
    let targets = [
        d.join(format!("instances/{b}/config/config.json")),
        d.join(format!("instances/{b}/data")),
        d.join(format!("instances/{b}/logs/service.log")),
        d.join(format!("instances/{a}/logs/service.log")),
        d.join("state.redb"),
        d.join("token"),
        d.join(format!("instances/{b}")),
        d.join("catalogue"),
    ];
    let list: Vec<String> = targets.iter().map(|p| p.display().to_string()).collect();
    std::fs::write(
        d.join(format!("instances/{a}/data/targets")),
        list.join("\n"),
    )
    .unwrap();
    let out = report(agent, &a);
    // Its own config it can read: the check and the service need it.
    let own = d.join(format!("instances/{a}/config/config.json"));
    let meta = std::fs::metadata(&own).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    assert_eq!(meta.uid(), 0);
    for (path, mode) in [("state.redb", 0o600), ("token", 0o600)] {
        assert_eq!(
            std::fs::metadata(d.join(path))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            mode,
            "{path}"
        );
    }
    agent.uninstall(&a);
    agent.uninstall(&b);
    out.into_iter().filter(|l| l.starts_with("READ=")).collect()
}

#[test]
fn a_service_reads_neither_other_instances_nor_the_agents_secrets() {
    let root = TempDir::new("sbx-read");
    let www = www_with_busybox(&root);
    let nginx = Nginx::start(&www, "");
    let catalogue = write_catalogue(
        root.path(),
        &[
            reader(&nginx, &www, "a", common::free_port()),
            reader(&nginx, &www, "b", common::free_port()),
        ],
    );
    let agent = Agent::start(root.path(), &catalogue, "");
    let read = read_secrets(&agent, &nginx, &www);
    assert!(read.is_empty(), "the service read: {read:?}");
}

#[test]
fn where_namespaces_are_refused_services_still_run_confined_as_reported() {
    let root = TempDir::new("sbx-nons");
    let www = www_with_busybox(&root);
    let nginx = Nginx::start(&www, "");
    let port = common::free_port();
    let status = format!(
        "grep -E '^(CapEff|CapBnd|NoNewPrivs|Uid):' /proc/self/status; echo PID=$$; \
         unshare -U true 2>/dev/null && echo USERNS=made || echo USERNS=refused; echo DONE; exec httpd -f -p 127.0.0.1:{port}"
    );
    let catalogue = write_catalogue(
        root.path(),
        &[
            busybox(
                &nginx,
                &www,
                "web",
                &status,
                &[],
                json!({ "health": { "tcp": port } }),
            ),
            reader(&nginx, &www, "a", common::free_port()),
            reader(&nginx, &www, "b", common::free_port()),
        ],
    );
    // As in a RouterOS container: no CAP_SYS_ADMIN, so new namespaces fail with EPERM.
    let agent = Agent::start_under(
        root.path(),
        &catalogue,
        "",
        &["setpriv", "--bounding-set", "-sys_admin"],
    );
    let iso = agent.data(
        "{ agent { isolation { applied missing { what why } } } }",
        json!({}),
    );
    let missing = &iso["agent"]["isolation"]["missing"];
    for ns in ["pid namespace", "mount namespace", "minimal root"] {
        let gap = missing
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["what"] == ns)
            .unwrap_or_else(|| panic!("{ns} not reported missing: {iso}"));
        if ns != "minimal root" {
            assert!(
                gap["why"].as_str().unwrap().contains("not permitted"),
                "{gap}"
            );
        }
    }
    let id = agent.install("web", "w");
    let p = agent.wait_status(&id, &["RUNNING", "FAILED"], TIMEOUT);
    assert_eq!(p["status"], "RUNNING", "{p}\n{}", agent.log());
    let out = report(&agent, &id);
    assert_ne!(field(&out, "PID="), "1", "no PID namespace here: {out:?}");
    assert_eq!(field(&out, "CapEff:"), "0000000000000000");
    assert_eq!(field(&out, "CapBnd:"), "0000000000000000");
    assert_eq!(field(&out, "NoNewPrivs:"), "1");
    assert_eq!(field(&out, "USERNS="), "refused", "{out:?}");
    assert!(
        field(&out, "Uid:")
            .split_whitespace()
            .all(|u| u.parse::<u32>().unwrap() >= 61000)
    );
    let inst = agent.data(
        "query($id: ID!) { instance(id: $id) { isolation { applied missing { what } } } }",
        json!({ "id": id }),
    );
    let applied = inst["instance"]["isolation"]["applied"].to_string();
    for want in ["service user", "no_new_privs", "rlimits"] {
        assert!(applied.contains(want), "{want} in {inst}");
    }
    assert!(!applied.contains("pid namespace"), "{inst}");
    agent.uninstall(&id);
    // File permissions alone still keep it out of the others' and the agent's files.
    let read = read_secrets(&agent, &nginx, &www);
    assert!(
        read.is_empty(),
        "without namespaces the service read: {read:?}"
    );
}
