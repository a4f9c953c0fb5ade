//! Several hosts on one machine, for partition tests: network namespaces joined by veth
//! pairs. A "server" namespace is linked to this (the test's) namespace and to each
//! agent namespace by its own /30; agents reach the server, the test reaches the
//! server, and nothing else routes. Traffic only ever goes to these namespaces' own
//! addresses. Needs root (CI runs as root); everything is removed on drop.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("`ip` (iproute2) is installed by scripts/test");
    assert!(
        out.status.success(),
        "ip {args:?} failed (network namespaces need root): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One namespace's side of a link.
pub struct Link {
    /// The veth name on the server side (taking it down partitions the host).
    pub server_side: String,
    /// The server's address on this link, which the host dials.
    pub server_ip: String,
    /// The host's own address on this link.
    pub host_ip: String,
}

pub struct Topology {
    tag: String,
    pub server_ns: String,
    /// The test's link to the server namespace.
    pub test_link: Link,
    /// Agent namespaces by name, and their links.
    pub agents: Vec<(String, Link)>,
}

impl Topology {
    /// A server namespace and `agents` agent namespaces.
    pub fn new(agents: usize) -> Topology {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // Short and unique per process and topology: interface names are <= 15 bytes.
        let tag = format!("k{}{n}", std::process::id() % 100_000);
        let server_ns = format!("{tag}s");
        ip(&["netns", "add", &server_ns]);
        ip(&["-n", &server_ns, "link", "set", "lo", "up"]);
        let mut topology = Topology {
            tag: tag.clone(),
            server_ns: server_ns.clone(),
            test_link: Link {
                server_side: String::new(),
                server_ip: String::new(),
                host_ip: String::new(),
            },
            agents: Vec::new(),
        };
        // Each topology in this process gets its own 10.(200+n).x.0/24 block; link k
        // is 10.(200+n).k.0/30.
        let block = 200 + (std::process::id() + n) % 50;
        topology.test_link = topology.link(None, block, 0);
        for i in 0..agents {
            let ns = format!("{tag}a{i}");
            ip(&["netns", "add", &ns]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            let link = topology.link(Some(&ns), block, i as u32 + 1);
            topology.agents.push((ns, link));
        }
        topology
    }

    /// A veth pair between the server namespace and `host` (None: this namespace).
    fn link(&self, host: Option<&str>, block: u32, k: u32) -> Link {
        let server_side = format!("{}v{k}", self.tag);
        let host_side = format!("{}h{k}", self.tag);
        ip(&[
            "link",
            "add",
            &server_side,
            "netns",
            &self.server_ns,
            "type",
            "veth",
            "peer",
            "name",
            &host_side,
        ]);
        if let Some(ns) = host {
            ip(&["link", "set", &host_side, "netns", ns]);
        }
        let server_ip = format!("10.{block}.{k}.1");
        let host_ip = format!("10.{block}.{k}.2");
        ip(&[
            "-n",
            &self.server_ns,
            "addr",
            "add",
            &format!("{server_ip}/30"),
            "dev",
            &server_side,
        ]);
        ip(&["-n", &self.server_ns, "link", "set", &server_side, "up"]);
        let host_args = |rest: &[&str]| -> Vec<String> {
            let mut v: Vec<String> = match host {
                Some(ns) => vec!["-n".into(), ns.into()],
                None => vec![],
            };
            v.extend(rest.iter().map(|s| s.to_string()));
            v
        };
        let run = |rest: &[&str]| {
            let args = host_args(rest);
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            ip(&refs);
        };
        run(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_side]);
        run(&["link", "set", &host_side, "up"]);
        Link {
            server_side,
            server_ip,
            host_ip,
        }
    }

    /// Takes agent `i`'s link down (a partition) or up again.
    pub fn set_agent_link(&self, i: usize, up: bool) {
        let (_, link) = &self.agents[i];
        ip(&[
            "-n",
            &self.server_ns,
            "link",
            "set",
            &link.server_side,
            if up { "up" } else { "down" },
        ]);
    }

    /// `ip netns exec NS` as a command prefix for `skiff`.
    pub fn exec_args(ns: &str) -> Vec<String> {
        vec!["netns".into(), "exec".into(), ns.into()]
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // This namespace's end of the test link goes explicitly: a namespace lingers
        // while anything still runs in it.
        let _ = Command::new("ip")
            .args(["link", "del", &format!("{}h0", self.tag)])
            .output();
        // Deleting a namespace deletes its veth ends, and so their peers.
        for (ns, _) in &self.agents {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.server_ns])
            .output();
    }
}
