//! A loaded program and its runs: builds each replica's WASI context and store, runs the
//! command to completion or stop, and turns whatever happened into an [`Outcome`].

use tokio_util::sync::CancellationToken;
use wasmtime::component::ResourceTable;
use wasmtime::{InstancePre, Linker, Store, Trap};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::{I32Exit, WasiCtx, WasiCtxView, WasiView};

use super::engine::Engine;
use super::guest::{bounded, describe_failure, wasi_builder};
use super::http::{HttpSpec, HttpState};
use super::limits::{MAX_HOST_RESOURCES, StoreBudget};
use super::slicing::{Metered, RunMeter, Slicer};
use super::{Outcome, ProgramKind, RunSpec};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// Store data of a preview1 command.
pub(crate) struct ModuleState {
    wasi: WasiP1Ctx,
    budget: StoreBudget,
    slicer: Slicer,
}

/// Store data of a preview2 command component.
pub(crate) struct ComponentState {
    wasi: WasiCtx,
    table: ResourceTable,
    budget: StoreBudget,
    slicer: Slicer,
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The WASI preview1 imports every command module links against.
pub(crate) fn module_linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<ModuleState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_async(&mut linker, |state: &mut ModuleState| &mut state.wasi)?;
    Ok(linker)
}

/// The WASI 0.2 imports every command component links against.
pub(crate) fn component_linker(
    engine: &wasmtime::Engine,
) -> wasmtime::Result<wasmtime::component::Linker<ComponentState>> {
    let mut linker = wasmtime::component::Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    Ok(linker)
}

/// A program pre-linked against WASI, ready to instantiate.
pub(crate) enum Prepared {
    Module(InstancePre<ModuleState>),
    Component(CommandPre<ComponentState>),
    Http(ProxyPre<HttpState>),
}

/// A compiled, classified and pre-linked guest program. Replicas of a pod share one
/// `Arc<Program>`; each [`Program::run`] gets its own store, memory and WASI context.
pub struct Program {
    engine: Engine,
    digest_hex: String,
    prepared: Prepared,
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Program")
            .field("digest", &self.digest_hex)
            .field("kind", &self.kind())
            .finish_non_exhaustive()
    }
}

/// Why running stopped short of an exit code.
enum RunError {
    /// Instantiation failed: a start-function trap, a refused allocation, no free slot.
    Instantiate(wasmtime::Error),
    /// The command itself failed: trap, `proc_exit`, or a fatal host-call error.
    Call(wasmtime::Error),
}

impl Program {
    pub(crate) fn new(engine: Engine, digest_hex: String, prepared: Prepared) -> Program {
        Program {
            engine,
            digest_hex,
            prepared,
        }
    }

    pub fn kind(&self) -> ProgramKind {
        match self.prepared {
            Prepared::Module(_) => ProgramKind::CommandModule,
            Prepared::Component(_) => ProgramKind::CommandComponent,
            Prepared::Http(_) => ProgramKind::HttpComponent,
        }
    }

    /// Serves one HTTP request with a fresh instance of an HTTP component (see
    /// `http.rs`). For any other kind of program, a 500 that says so.
    pub async fn serve<B>(
        &self,
        spec: &HttpSpec,
        request: hyper::Request<B>,
        stop: CancellationToken,
    ) -> hyper::Response<HyperOutgoingBody>
    where
        B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        match &self.prepared {
            Prepared::Http(pre) => {
                super::http::handle(&self.engine, pre, spec, request, stop).await
            }
            _ => super::http::host_response(500, "this program is a command, not an HTTP app"),
        }
    }

    /// The sha256 hex digest of the binary this program was loaded from.
    pub fn digest(&self) -> &str {
        &self.digest_hex
    }

    /// Runs the command once with exactly what `spec` grants, until it exits, fails or
    /// `stop` is cancelled. Never panics on guest behaviour; every end is an [`Outcome`].
    ///
    /// Stopping is prompt in both places a guest can be: running wasm is trapped at its
    /// next slice boundary by the epoch callback, and a guest suspended in a host call
    /// (sleep, I/O) or a CPU-throttle pause is dropped. Dropping the future is supported by
    /// wasmtime: its fiber is unwound and the store stays usable for inspection.
    pub async fn run(&self, spec: RunSpec, stop: CancellationToken) -> Outcome {
        self.run_reporting(spec, stop, || {}).await
    }

    /// Like `run`, calling `started` once the guest is instantiated, just before its
    /// entry point runs: the moment Kubernetes would call the container Running. A guest
    /// that fails to instantiate never calls it.
    pub async fn run_reporting(
        &self,
        spec: RunSpec,
        stop: CancellationToken,
        started: impl FnOnce() + Send,
    ) -> Outcome {
        if stop.is_cancelled() {
            return Outcome::Interrupted;
        }
        let mut builder = match wasi_builder(&spec) {
            Ok(builder) => builder,
            Err(reason) => return Outcome::Failed(bounded(reason)),
        };
        let _ticking = self.engine.enter_run();
        let meter = RunMeter::adding_to(Some(spec.usage.clone()));
        let slicer = Slicer::new(
            self.engine.config().slice_ticks,
            stop.clone(),
            meter.clone(),
            spec.cpu_limit_millicores,
        );
        let budget = StoreBudget::new(spec.memory_limit).adding_to(spec.usage.clone());
        match &self.prepared {
            Prepared::Http(_) => Outcome::Failed(
                "an HTTP component is served per request, not run as a command".to_owned(),
            ),
            Prepared::Module(pre) => {
                let state = ModuleState {
                    wasi: builder.build_p1(),
                    budget,
                    slicer,
                };
                let mut store = Store::new(self.engine.wasmtime(), state);
                store.limiter(|state| &mut state.budget);
                Slicer::install(&mut store, |state| &mut state.slicer);
                let ended = {
                    let run = Metered::new(run_module(pre, &mut store, started), meter);
                    tokio::select! {
                        biased;
                        () = stop.cancelled() => None,
                        ended = run => Some(ended),
                    }
                };
                let state = store.data();
                outcome(ended, &state.budget, &state.slicer)
            }
            Prepared::Component(pre) => {
                let mut table = ResourceTable::new();
                table.set_max_capacity(MAX_HOST_RESOURCES);
                let state = ComponentState {
                    wasi: builder.build(),
                    table,
                    budget,
                    slicer,
                };
                let mut store = Store::new(self.engine.wasmtime(), state);
                store.limiter(|state| &mut state.budget);
                Slicer::install(&mut store, |state| &mut state.slicer);
                let ended = {
                    let run = Metered::new(run_component(pre, &mut store, started), meter);
                    tokio::select! {
                        biased;
                        () = stop.cancelled() => None,
                        ended = run => Some(ended),
                    }
                };
                let state = store.data();
                outcome(ended, &state.budget, &state.slicer)
            }
        }
    }
}

async fn run_module(
    pre: &InstancePre<ModuleState>,
    store: &mut Store<ModuleState>,
    started: impl FnOnce(),
) -> Result<i32, RunError> {
    let instance = pre
        .instantiate_async(&mut *store)
        .await
        .map_err(RunError::Instantiate)?;
    let start = instance
        .get_typed_func::<(), ()>(&mut *store, "_start")
        .map_err(RunError::Instantiate)?;
    started();
    start
        .call_async(&mut *store, ())
        .await
        .map(|()| 0)
        .map_err(RunError::Call)
}

async fn run_component(
    pre: &CommandPre<ComponentState>,
    store: &mut Store<ComponentState>,
    started: impl FnOnce(),
) -> Result<i32, RunError> {
    let command = pre
        .instantiate_async(&mut *store)
        .await
        .map_err(RunError::Instantiate)?;
    started();
    match command.wasi_cli_run().call_run(&mut *store).await {
        Ok(Ok(())) => Ok(0),
        // `run` returning `err` is how a component says "exit with failure" (code 1).
        Ok(Err(())) => Ok(1),
        Err(error) => Err(RunError::Call(error)),
    }
}

/// Decides how the run ended. `None` means the stop token won the race.
fn outcome(ended: Option<Result<i32, RunError>>, budget: &StoreBudget, slicer: &Slicer) -> Outcome {
    let out_of_memory = || budget.refusal().map(|r| Outcome::OutOfMemory(r.message()));
    let exited = |code: i32| match code {
        0 => Outcome::Exited(0),
        code => out_of_memory().unwrap_or(Outcome::Exited(code)),
    };
    let (error, instantiating) = match ended {
        None => return Outcome::Interrupted,
        Some(Ok(code)) => return exited(code),
        Some(Err(RunError::Instantiate(error))) => (error, true),
        Some(Err(RunError::Call(error))) => (error, false),
    };
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        return exited(exit.0);
    }
    if slicer.interrupted() {
        return Outcome::Interrupted;
    }
    if let Some(oom) = out_of_memory() {
        return oom;
    }
    let is_trap = error.downcast_ref::<Trap>().is_some();
    if instantiating && !is_trap {
        // Not the guest's code failing: no free instance slot, a store limit, a link error.
        return Outcome::Failed(bounded(format!(
            "instantiating the program failed: {error:#}"
        )));
    }
    Outcome::Trapped(describe_failure(&error))
}
