//! Per-store memory bounds: linear memory and table growth against the pod's memory limit,
//! and hard caps on what one store may create even without a limit.

use wasmtime::ResourceLimiter;

/// Memory limit when the pod sets none: 4 GiB, the whole address space of a wasm32 memory.
/// It takes nothing from ordinary 32-bit guests, but still bounds memory64 guests and stores
/// with several memories, which could otherwise grow until the node runs out.
pub const DEFAULT_MEMORY_LIMIT: u64 = 4 << 30;

/// Elements any one table may hold, limit or not. Each element costs the host a pointer
/// (or two) outside linear memory; real programs have tables of thousands of entries (a
/// debug C# build was seen with 10k+), so a million leaves room while capping a table at
/// 8-16 MiB of host memory.
pub const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// Core instances one store may create. A command component made by wit-component has
/// about five (program, adapter, shims); dynamically linked ones (componentize-py) a few
/// dozen. Each instance costs host metadata that isn't linear memory.
pub const MAX_INSTANCES_PER_STORE: usize = 100;

/// Linear memories one store may create: one per core module that defines one (program and
/// adapter usually), with room for multi-memory modules.
pub const MAX_MEMORIES_PER_STORE: usize = 32;

/// Tables one store may create: a few per core module at most in practice.
pub const MAX_TABLES_PER_STORE: usize = 100;

/// Host resources (open files, streams, pollables) one component may hold in its WASI
/// resource table. Each is a host allocation outside the memory limit; 65536 is like a
/// generous open-files rlimit, far below wasmtime's default of a million. (Preview1
/// modules keep their table inside `WasiP1Ctx`, which doesn't expose this setting.)
pub const MAX_HOST_RESOURCES: usize = 1 << 16;

/// Host bytes charged per table element: wasmtime stores a pointer per element (funcrefs);
/// charging two words covers the larger element kinds.
const TABLE_ELEMENT_BYTES: u64 = 16;

/// A growth the limiter refused: the evidence that a later failure was memory exhaustion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The store would have held `wanted` bytes, more than `limit`.
    Memory { limit: u64, wanted: u64 },
    /// A table would have had `wanted` elements, more than [`MAX_TABLE_ELEMENTS`].
    TableCap { wanted: usize },
}

impl Refusal {
    pub(crate) fn message(&self) -> String {
        match self {
            Refusal::Memory { limit, wanted } => {
                format!("memory limit {limit} bytes exceeded (wanted {wanted})")
            }
            Refusal::TableCap { wanted } => format!(
                "table of {wanted} elements exceeds the cap of {MAX_TABLE_ELEMENTS} elements"
            ),
        }
    }
}

/// Charges every linear memory and table of a store against one budget: the limit covers
/// the guest's whole footprint, whatever mix of memories and tables it uses. Memories and
/// tables live as long as the store, so the charge only grows.
#[derive(Debug)]
pub(crate) struct StoreBudget {
    limit: u64,
    used: u64,
    /// Charge of the last permitted growth, returned if the growth then fails.
    last_grant: u64,
    refused: Option<Refusal>,
    /// The container's total, which this store's charge is part of while it lives.
    usage: Option<std::sync::Arc<super::GuestUsage>>,
}

impl StoreBudget {
    pub(crate) fn new(limit: Option<u64>) -> StoreBudget {
        StoreBudget {
            limit: limit.unwrap_or(DEFAULT_MEMORY_LIMIT),
            used: 0,
            last_grant: 0,
            refused: None,
            usage: None,
        }
    }

    /// Also charges what the store holds to a container's usage, until it is dropped.
    pub(crate) fn adding_to(mut self, usage: std::sync::Arc<super::GuestUsage>) -> StoreBudget {
        self.usage = Some(usage);
        self
    }

    /// The first refused growth, if any (later ones are usually the guest retrying smaller).
    pub(crate) fn refusal(&self) -> Option<Refusal> {
        self.refused
    }

    fn charge(&mut self, current: u64, desired: u64) -> bool {
        let delta = desired.saturating_sub(current);
        let wanted = self.used.saturating_add(delta);
        if wanted > self.limit {
            self.refused.get_or_insert(Refusal::Memory {
                limit: self.limit,
                wanted,
            });
            self.last_grant = 0;
            return false;
        }
        self.used = wanted;
        self.last_grant = delta;
        if let Some(usage) = &self.usage {
            usage.add_memory(delta);
        }
        true
    }

    fn refund_last_grant(&mut self) {
        self.used = self.used.saturating_sub(self.last_grant);
        if let Some(usage) = &self.usage {
            usage.sub_memory(self.last_grant);
        }
        self.last_grant = 0;
    }
}

impl Drop for StoreBudget {
    /// The store's memories and tables go with it.
    fn drop(&mut self) {
        if let Some(usage) = &self.usage {
            usage.sub_memory(self.used);
        }
    }
}

impl ResourceLimiter for StoreBudget {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // `Ok(false)` makes `memory.grow` return -1, as the spec allows; the guest's
        // allocator then reports out-of-memory its own way (usually abort -> trap), which
        // `Program::run` turns into `Outcome::OutOfMemory` thanks to the recorded refusal.
        Ok(self.charge(current as u64, desired as u64))
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.refund_last_grant();
        Ok(())
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            self.refused
                .get_or_insert(Refusal::TableCap { wanted: desired });
            return Ok(false);
        }
        Ok(self.charge(
            current as u64 * TABLE_ELEMENT_BYTES,
            desired as u64 * TABLE_ELEMENT_BYTES,
        ))
    }

    fn table_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.refund_last_grant();
        Ok(())
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES_PER_STORE
    }

    fn tables(&self) -> usize {
        MAX_TABLES_PER_STORE
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES_PER_STORE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn memories_and_tables_share_one_budget() -> wasmtime::Result<()> {
        let mut budget = StoreBudget::new(Some(16 * MIB as u64));
        assert!(budget.memory_growing(0, 15 * MIB, None)?);
        assert!(budget.table_growing(0, 1000, None)?);
        assert!(!budget.memory_growing(15 * MIB, 16 * MIB, None)?);
        let refusal = budget.refusal().expect("growth past the limit is recorded");
        assert_eq!(
            refusal,
            Refusal::Memory {
                limit: 16 * MIB as u64,
                wanted: 16 * MIB as u64 + 16_000
            }
        );
        assert_eq!(
            refusal.message(),
            "memory limit 16777216 bytes exceeded (wanted 16793216)"
        );
        Ok(())
    }

    #[test]
    fn failed_growth_is_refunded() -> wasmtime::Result<()> {
        let mut budget = StoreBudget::new(Some(2 * MIB as u64));
        assert!(budget.memory_growing(0, 2 * MIB, None)?);
        budget.memory_grow_failed(wasmtime::format_err!("mmap failed"))?;
        assert!(budget.memory_growing(0, 2 * MIB, None)?);
        assert_eq!(budget.refusal(), None);
        Ok(())
    }

    #[test]
    fn tables_have_a_hard_cap_even_without_a_limit() -> wasmtime::Result<()> {
        let mut budget = StoreBudget::new(None);
        assert!(!budget.table_growing(0, MAX_TABLE_ELEMENTS + 1, None)?);
        assert!(budget.table_growing(0, MAX_TABLE_ELEMENTS, None)?);
        Ok(())
    }
}
