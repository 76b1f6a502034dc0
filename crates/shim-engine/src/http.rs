//! Serving a `wasi:http/incoming-handler` component.
//!
//! The container's process owns a listening socket in the pod's network
//! namespace (the shim binds it before `start`, see the executor) and serves
//! HTTP/1.1 on it. Every request gets a fresh instance of the component from
//! the pre-linked [`ProxyPre`] and the engine's instance pool, with the
//! container's WASI view (env, preopens, stdio into the container log) and
//! memory limit; nothing a request leaves behind is seen by the next one. A
//! request whose guest traps is answered with 500 and logged; the server
//! keeps serving.
//!
//! SIGTERM or SIGINT stops the server gracefully, as Kubernetes expects
//! between StopContainer's SIGTERM and its SIGKILL: no new connections are
//! accepted, requests in flight are answered, idle keep-alive connections
//! are closed, guests still running finish, then the process exits 0.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::StatusCode;
use hyper_util::server::graceful::GracefulShutdown;
use log::{debug, error, info, warn};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use wasmtime::Store;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::WasiHttpView;

use crate::{Compiled, ComponentState, Error, Exit, Invocation, Program};

/// The port an HTTP component listens on unless the container says otherwise.
pub const DEFAULT_PORT: u16 = 8080;

impl Program {
    /// Serves this `wasi:http/incoming-handler` component on `listener` until
    /// SIGTERM or SIGINT, then drains (see the module docs) and returns exit 0.
    ///
    /// The caller may hold SIGTERM and SIGINT with [`hold_termination_signals`]
    /// until this runs: they are unblocked once the server's handlers are in
    /// place, so a stop that arrives early is delivered then, not lost.
    pub fn serve(
        &self,
        invocation: &Invocation,
        listener: std::net::TcpListener,
    ) -> Result<Exit, Error> {
        let Compiled::Http { pre } = &self.compiled else {
            return Err(Error::Wasi(
                "only a wasi:http/incoming-handler component can serve HTTP".into(),
            ));
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Engine(format!("cannot start the HTTP runtime: {e}")))?;
        let (in_flight, mut all_finished) = mpsc::channel::<()>(1);
        let server = Arc::new(Server {
            pre: pre.clone(),
            invocation: invocation.clone(),
            in_flight,
        });
        let listener = {
            let _context = runtime.enter();
            listener
                .set_nonblocking(true)
                .and_then(|()| tokio::net::TcpListener::from_std(listener))
                .map_err(|e| Error::Wasi(format!("cannot serve on the listening socket: {e}")))?
        };
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Wasi(format!("the listening socket has no address: {e}")))?;
        info!("serving HTTP on {addr}");
        runtime
            .block_on(accept_until_stopped(server, listener))
            .map_err(|e| Error::Wasi(format!("serving HTTP on {addr}: {e}")))?;
        // Every guest task holds a sender; recv returns None once all are done.
        runtime.block_on(all_finished.recv());
        info!("stopped serving HTTP on {addr}: every request in flight was answered");
        Ok(Exit::Code(0))
    }
}

async fn accept_until_stopped(
    server: Arc<Server>,
    listener: tokio::net::TcpListener,
) -> std::io::Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    unblock_termination_signals();
    let connections = GracefulShutdown::new();
    let http = http1::Builder::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of fds or a connection reset before accept: not fatal.
                    warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        };
        let server = server.clone();
        let service = hyper::service::service_fn(move |request| server.clone().respond(request));
        let connection = connections.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!("connection ended with an error: {e}");
            }
        });
    }
    drop(listener);
    info!("stop requested: no new connections; draining the ones open");
    connections.shutdown().await;
    Ok(())
}

/// Holds SIGTERM and SIGINT pending in the calling thread (and the threads it
/// starts) until [`Program::serve`] has its handlers in place: a stop that
/// arrives before then waits instead of being lost. Call before start.
pub fn hold_termination_signals() {
    termination_signal_mask(libc::SIG_BLOCK);
}

/// The server's handlers are registered with tokio; a stop may now be delivered.
fn unblock_termination_signals() {
    termination_signal_mask(libc::SIG_UNBLOCK);
}

fn termination_signal_mask(how: libc::c_int) {
    // SAFETY: plain signal-mask manipulation of the calling thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

struct Server {
    pre: ProxyPre<ComponentState>,
    invocation: Invocation,
    /// Cloned into every guest task, so the drain can wait for the last one.
    in_flight: mpsc::Sender<()>,
}

impl Server {
    async fn respond(
        self: Arc<Self>,
        request: hyper::Request<Incoming>,
    ) -> Result<hyper::Response<HyperOutgoingBody>, Infallible> {
        let target = request.uri().to_string();
        Ok(match self.handle(&target, request).await {
            Ok(response) => response,
            Err(e) => {
                error!("{target}: {e}");
                plain_response(StatusCode::INTERNAL_SERVER_ERROR)
            }
        })
    }

    async fn handle(
        &self,
        target: &str,
        request: hyper::Request<Incoming>,
    ) -> wasmtime::Result<hyper::Response<HyperOutgoingBody>> {
        let ctx = self
            .invocation
            .builder()
            .map_err(|e| wasmtime::format_err!("{e}"))?
            .build();
        let mut store = Store::new(
            self.pre.engine(),
            ComponentState::new(ctx, &self.invocation),
        );
        store.limiter(|state| &mut state.limits);
        self.invocation.arm(&mut store);
        let deadline = self.invocation.deadline;
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let mut http = store.data_mut().http();
        let request = http.new_incoming_request(Scheme::Http, request)?;
        let response_out = http.new_response_outparam(sender)?;
        let pre = self.pre.clone();
        let in_flight = self.in_flight.clone();
        let shown = target.to_string();
        // The guest may keep running (streaming the body) after it has set
        // the response, so it runs in its own task.
        let guest = tokio::spawn(async move {
            let _in_flight = in_flight;
            let outcome = async {
                let proxy = pre.instantiate_async(&mut store).await?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, request, response_out)
                    .await
            }
            .await;
            match (&outcome, deadline) {
                (Err(e), Some(deadline)) if crate::is_interrupt(e) => eprintln!(
                    "{shown}: the request ran past its deadline of {deadline:?} (annotation \
                     wasmtime.containerd.io/deadline) and was stopped"
                ),
                // Into the container log, where the guest's own output goes.
                (Err(e), _) => eprintln!("{shown}: the guest failed: {e:?}"),
                (Ok(()), _) => {}
            }
            outcome.is_ok()
        });
        // wasm code stops at the deadline by itself (epochs); a guest blocked
        // in a host call (a sleep, a read) is stopped here.
        let answer = match deadline {
            Some(deadline) => {
                match tokio::time::timeout(deadline + crate::DEADLINE_GRACE, receiver).await {
                    Ok(answer) => answer,
                    Err(_) => {
                        guest.abort();
                        eprintln!(
                            "{target}: the request ran past its deadline of {deadline:?} \
                             (annotation wasmtime.containerd.io/deadline) and was stopped"
                        );
                        return Err(wasmtime::format_err!("the request ran past its deadline"));
                    }
                }
            }
            None => receiver.await,
        };
        match answer {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(code)) => Err(wasmtime::format_err!("the guest answered with {code:?}")),
            Err(_) => Err(match guest.await {
                Ok(true) => wasmtime::format_err!("the guest returned without a response"),
                Ok(false) => wasmtime::format_err!("the guest failed before it answered"),
                Err(e) => wasmtime::format_err!("the guest's task failed: {e}"),
            }),
        }
    }
}

/// A response with `status` and its reason phrase as the body.
fn plain_response(status: StatusCode) -> hyper::Response<HyperOutgoingBody> {
    let reason = status.canonical_reason().unwrap_or("error");
    let body = Full::new(Bytes::from(format!("{reason}\n")))
        .map_err(|never: Infallible| match never {})
        .boxed_unsync();
    let mut response = hyper::Response::new(body);
    *response.status_mut() = status;
    response
}
