//! What the host can give guests' memory, and the engine settings that follow from it:
//! how much address space each linear memory reserves, and whether HTTP instances come
//! from a pool (and how large) or are allocated on demand.
//!
//! wasmtime's defaults are made for 64-bit servers: every linear memory reserves 4 GiB of
//! address space plus a guard (so compiled code needs no bounds checks), and a pooling
//! allocator reserves that for every slot up front. A server with 128 TiB of address space
//! and tens of GiB of memory holds thousands of such slots. An edge device may not: an
//! arm64 kernel built with 39-bit virtual addresses gives a process 512 GiB, a 32-bit
//! process has 3 GiB in all, and a Raspberry Pi has 1 to 8 GiB of memory. So the agent
//! reads the host once at start and sizes from it ([`plan`]), and says what it chose.

use std::fmt;

/// Address space from which memories keep wasmtime's 64-bit default reservation (4 GiB,
/// the wasm32 address space, which lets compiled code skip bounds checks): a node runs up to
/// thousands of pods (5,000 by default), each with one or two memories, so 4 GiB apiece
/// needs tens of TiB. x86-64 (47 bits, 128 TiB) and arm64 with 48-bit addresses have it;
/// an arm64 kernel with 39-bit addresses (512 GiB) would run out at about a hundred pods.
const FULL_RESERVATION_MIN_ADDRESS_SPACE: u64 = 1 << 46;

/// A linear memory's initial reservation where the address space is small: memories
/// larger than this move when they grow (wasmtime copies them), and compiled code does
/// bounds checks. 64 MiB holds most guests whole.
const SMALL_RESERVATION: u64 = 64 << 20;

/// Extra room reserved when a memory outgrows [`SMALL_RESERVATION`] and moves, so the
/// next growths do not move it again at once.
pub(crate) const SMALL_RESERVATION_FOR_GROWTH: u64 = 128 << 20;

/// The largest memory a pooled slot must hold: a pod without a memory limit may use the
/// whole wasm32 space (`limits::DEFAULT_MEMORY_LIMIT`), and a slot smaller than a pod's
/// limit would fail a guest that the on-demand allocator serves. So a slot is never
/// sized below it, and where slots that large do not fit, the pool is not used.
pub(crate) const POOL_SLOT_MEMORY: u64 = super::limits::DEFAULT_MEMORY_LIMIT;

/// The guard after each pooled memory slot: wasmtime's 64-bit default, which the engine
/// keeps.
const POOL_SLOT_GUARD: u64 = 32 << 20;

/// Linear memories per HTTP instance (program and adapter of a wasi:http component).
pub(crate) const HTTP_MEMORIES_PER_INSTANCE: u32 = 2;

/// Concurrent HTTP instances the pool holds at most, across every app of the node.
const HTTP_POOL_MAX_INSTANCES: u32 = 1000;

/// Host memory counted per pooled HTTP instance: a Rust wasi:http component touches about
/// 1 MiB of linear memory and part of a 2 MiB stack per request. The pool's size is a cap
/// on concurrent requests, so it should not promise more of them than memory can hold.
const HTTP_INSTANCE_MEMORY: u64 = 8 << 20;

/// The share of the address space the HTTP pool may reserve: the rest is for the pods'
/// own memories, the agent's heap and the compiled code.
const POOL_ADDRESS_SPACE_SHARE: u64 = 4;

/// Smallest pool worth having: beyond its size, requests get 503 while the on-demand
/// allocator would have served them, so a smaller pool is worse than none.
const MIN_POOL_INSTANCES: u32 = 32;

/// How HTTP instances get their memories, tables and stacks (`--http-instance-allocation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InstanceAllocation {
    /// Pooling where the host has room for a useful pool, on demand otherwise.
    #[default]
    Auto,
    /// Always pool (sized from the host unless `http_pool_instances` says).
    Pooling,
    /// Allocate each instance's memory when it starts (mmap) and free it when it ends.
    OnDemand,
}

impl std::str::FromStr for InstanceAllocation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(InstanceAllocation::Auto),
            "pooling" => Ok(InstanceAllocation::Pooling),
            "on-demand" => Ok(InstanceAllocation::OnDemand),
            other => Err(format!(
                "'{other}' is not an instance allocation: use auto, pooling or on-demand"
            )),
        }
    }
}

/// What the host offers, read once at start ([`HostResources::detect`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostResources {
    /// Bytes of virtual address space a process may map.
    pub address_space: u64,
    /// Bytes of memory the agent may use: the machine's, or its cgroup's limit if lower.
    pub memory: u64,
}

impl HostResources {
    /// Reads the host: the address space from where the kernel put the stack (it is
    /// placed at the top of the user address space, so the next power of two above it is
    /// the space's size) and `RLIMIT_AS`; the memory from `/proc/meminfo` and the cgroup
    /// v2 `memory.max`.
    pub fn detect() -> HostResources {
        let stack_marker = 0u8;
        let stack = std::ptr::addr_of!(stack_marker) as usize as u64;
        let address_space = address_space_from_stack(stack, usize::BITS);
        let address_space = match rlimit_as() {
            Some(limit) => address_space.min(limit),
            None => address_space,
        };
        let memory = [meminfo_total(), cgroup_memory_max()]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(u64::MAX);
        HostResources {
            address_space,
            memory,
        }
    }
}

/// The user address space's size as seen from an address near its top (the stack's).
/// A 32-bit process has 3 GiB under a 32-bit kernel (its stack below 3 GiB) and 4 GiB
/// under a 64-bit one.
fn address_space_from_stack(stack: u64, pointer_bits: u32) -> u64 {
    if pointer_bits < 64 {
        return if stack >= 3 << 30 { 4 << 30 } else { 3 << 30 };
    }
    stack.saturating_add(1).next_power_of_two()
}

fn rlimit_as() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } != 0 {
        return None;
    }
    #[allow(
        clippy::unnecessary_cast,
        reason = "rlim_t is 32 bits wide on 32-bit targets such as armv7"
    )]
    let current = limit.rlim_cur as u64;
    (limit.rlim_cur != libc::RLIM_INFINITY).then_some(current)
}

/// The machine's memory in bytes (`MemTotal` of `/proc/meminfo`).
pub fn meminfo_total() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

fn cgroup_memory_max() -> Option<u64> {
    // cgroup v2: the agent's own group, from /proc/self/cgroup ("0::/path").
    let group = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = group.lines().find_map(|l| l.strip_prefix("0::"))?;
    let max =
        std::fs::read_to_string(format!("/sys/fs/cgroup{}/memory.max", path.trim_end())).ok()?;
    max.trim().parse().ok()
}

/// The engine's memory settings, decided from the host ([`plan`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Address space each linear memory reserves up front (`Config::memory_reservation`);
    /// `None` keeps wasmtime's default for the target (4 GiB on 64-bit, 10 MiB on 32-bit).
    pub reservation: Option<u64>,
    /// How HTTP instances are allocated.
    pub http: HttpAllocation,
    /// What it was decided from.
    pub host: HostResources,
}

impl MemoryPlan {
    /// The reservation per memory as the Node's annotation and the agent's log say it.
    pub fn reservation_text(&self) -> String {
        self.reservation
            .map_or_else(|| "wasmtime's default".to_owned(), bytes)
    }
}

/// The HTTP engine's allocator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpAllocation {
    /// A pool of `instances` slots, reserving `reserved` bytes of address space.
    Pooling { instances: u32, reserved: u64 },
    /// On demand, and why.
    OnDemand { reason: String },
}

impl HttpAllocation {
    /// `pooling` or `on-demand`, as the Node's annotation says.
    pub fn mode(&self) -> &'static str {
        match self {
            HttpAllocation::Pooling { .. } => "pooling",
            HttpAllocation::OnDemand { .. } => "on-demand",
        }
    }
}

impl fmt::Display for HttpAllocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpAllocation::Pooling {
                instances,
                reserved,
            } => write!(
                f,
                "pooling: {instances} instances, {} of address space reserved",
                bytes(*reserved)
            ),
            HttpAllocation::OnDemand { reason } => write!(f, "on-demand: {reason}"),
        }
    }
}

/// Address space one pooled HTTP instance reserves: its memories' slots at the largest
/// memory a pod may have, plus a guard each.
fn pool_bytes_per_instance() -> u64 {
    u64::from(HTTP_MEMORIES_PER_INSTANCE) * (POOL_SLOT_MEMORY + POOL_SLOT_GUARD)
}

/// Decides the engine's memory settings for `host`. `allocation` and `pool_instances`
/// are the operator's (`--http-instance-allocation`, `--http-pool-instances`).
pub fn plan(
    host: HostResources,
    pointer_bits: u32,
    allocation: InstanceAllocation,
    pool_instances: Option<u32>,
) -> MemoryPlan {
    let reservation = (pointer_bits >= 64
        && host.address_space < FULL_RESERVATION_MIN_ADDRESS_SPACE)
        .then_some(SMALL_RESERVATION);
    let per_instance = pool_bytes_per_instance();
    let by_address = host.address_space / POOL_ADDRESS_SPACE_SHARE / per_instance;
    let by_memory = host.memory / HTTP_INSTANCE_MEMORY;
    let sized = u64::from(HTTP_POOL_MAX_INSTANCES)
        .min(by_address)
        .min(by_memory) as u32;
    let pooling = |instances: u32| HttpAllocation::Pooling {
        instances,
        reserved: u64::from(instances) * per_instance,
    };
    let http = match allocation {
        InstanceAllocation::OnDemand => HttpAllocation::OnDemand {
            reason: "set by --http-instance-allocation".to_owned(),
        },
        InstanceAllocation::Pooling => pooling(pool_instances.unwrap_or(sized).max(1)),
        InstanceAllocation::Auto if pointer_bits < 64 => HttpAllocation::OnDemand {
            reason: format!(
                "a {pointer_bits}-bit process has {} of address space, less than one pooled \
                 instance reserves ({}: {HTTP_MEMORIES_PER_INSTANCE} memory slots of {} each)",
                bytes(host.address_space),
                bytes(per_instance),
                bytes(POOL_SLOT_MEMORY)
            ),
        },
        InstanceAllocation::Auto => match pool_instances {
            Some(n) => pooling(n.max(1)),
            None if sized >= MIN_POOL_INSTANCES => pooling(sized),
            None => HttpAllocation::OnDemand {
                reason: format!(
                    "a pool would hold only {sized} instances (fewer than {MIN_POOL_INSTANCES}): \
                     a quarter of the {} address space fits {by_address} of {} each, and {} of \
                     memory fits {by_memory} of {}",
                    bytes(host.address_space),
                    bytes(per_instance),
                    bytes(host.memory),
                    bytes(HTTP_INSTANCE_MEMORY)
                ),
            },
        },
    };
    MemoryPlan {
        reservation,
        http,
        host,
    }
}

/// `1.5 GiB`, `512 MiB`, `8.1 TiB`: sizes as people read them.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 || unit == 0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    const TIB: u64 = 1 << 40;

    fn host(address_space: u64, memory: u64) -> HostResources {
        HostResources {
            address_space,
            memory,
        }
    }

    #[test]
    fn the_address_space_is_read_from_the_stack() {
        // x86-64 (47 bits), arm64 with 48 and 39 bits, qemu-aarch64's emulated layout.
        assert_eq!(address_space_from_stack(0x7ffc_1234_5678, 64), 128 * TIB);
        assert_eq!(address_space_from_stack(0xffff_f7ff_0000, 64), 256 * TIB);
        assert_eq!(address_space_from_stack(0x7f_f7ff_0000, 64), 512 * GIB);
        assert_eq!(address_space_from_stack(0x55_0282_15c8, 64), 512 * GIB);
        // armv7: a 32-bit kernel's 3G/1G split, and a 32-bit process on a 64-bit kernel.
        assert_eq!(address_space_from_stack(0xbeff_f000, 32), 3 * GIB);
        assert_eq!(address_space_from_stack(0xfffe_f000, 32), 4 * GIB);
        let detected = HostResources::detect();
        assert!(
            detected.address_space >= 4 * GIB && detected.memory > 0,
            "{detected:?}"
        );
    }

    #[test]
    fn a_server_pools_a_thousand_instances_with_full_reservations() {
        let plan = plan(
            host(128 * TIB, 24 * GIB),
            64,
            InstanceAllocation::Auto,
            None,
        );
        assert_eq!(plan.reservation, None);
        assert_eq!(
            plan.http,
            HttpAllocation::Pooling {
                instances: 1000,
                reserved: 1000 * 2 * (4 * GIB + (32 << 20)),
            }
        );
        assert_eq!(
            plan.http.to_string(),
            "pooling: 1000 instances, 7.9 TiB of address space reserved"
        );
    }

    #[test]
    fn memory_bounds_the_pool() {
        // A 1 GiB board: 128 concurrent instances, not a thousand.
        let board = plan(host(256 * TIB, GIB), 64, InstanceAllocation::Auto, None);
        assert!(matches!(
            board.http,
            HttpAllocation::Pooling { instances: 128, .. }
        ));
        // 128 MiB: too few to be worth a pool.
        let tiny = plan(
            host(256 * TIB, 128 << 20),
            64,
            InstanceAllocation::Auto,
            None,
        );
        assert_eq!(tiny.http.mode(), "on-demand");
    }

    #[test]
    fn a_39_bit_address_space_gets_small_reservations_and_no_pool() {
        let plan = plan(host(512 * GIB, 8 * GIB), 64, InstanceAllocation::Auto, None);
        assert_eq!(plan.reservation, Some(64 << 20));
        let HttpAllocation::OnDemand { reason } = &plan.http else {
            panic!("{:?}", plan.http)
        };
        assert!(
            reason.contains("512 GiB address space fits 15 of 8.1 GiB"),
            "{reason}"
        );
    }

    #[test]
    fn a_32_bit_process_allocates_on_demand_with_the_targets_reservation() {
        let plan = plan(host(3 * GIB, 4 * GIB), 32, InstanceAllocation::Auto, None);
        assert_eq!(plan.reservation, None);
        let HttpAllocation::OnDemand { reason } = &plan.http else {
            panic!("{:?}", plan.http)
        };
        assert!(reason.starts_with("a 32-bit process has 3 GiB"), "{reason}");
    }

    #[test]
    fn the_operator_decides_over_the_host() {
        let server = host(128 * TIB, 24 * GIB);
        let plan_of = |a, n| plan(server, 64, a, n).http;
        assert_eq!(
            plan_of(InstanceAllocation::OnDemand, None).mode(),
            "on-demand"
        );
        assert!(matches!(
            plan_of(InstanceAllocation::Auto, Some(50)),
            HttpAllocation::Pooling { instances: 50, .. }
        ));
        let small = plan(host(512 * GIB, GIB), 64, InstanceAllocation::Pooling, None).http;
        assert!(matches!(
            small,
            HttpAllocation::Pooling { instances: 15, .. }
        ));
        assert_eq!(
            "on-demand".parse::<InstanceAllocation>(),
            Ok(InstanceAllocation::OnDemand)
        );
        assert!("sometimes".parse::<InstanceAllocation>().is_err());
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(bytes(3 * GIB), "3 GiB");
        assert_eq!(bytes(64 << 20), "64 MiB");
        assert_eq!(bytes(1536 << 20), "1.5 GiB");
        assert_eq!(bytes(512), "512 B");
    }
}
