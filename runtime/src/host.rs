//! Runs one worker on a dedicated thread with its own current-thread tokio
//! runtime, and hands out a `Send` handle for dispatching requests to it.

use std::sync::Arc;
use std::thread;

use tokio::sync::{mpsc, oneshot};

use crate::ext::http::{Body, DispatchError, WorkerRequest};
use crate::worker::{request_queue, LoadError, WorkerIsolate, WorkerOptions, WorkerSource};

/// Sends requests to a running worker. Cheap to clone; the worker stops once
/// every handle is dropped and its in-flight work has finished.
#[derive(Clone)]
pub struct WorkerHandle {
    name: Arc<str>,
    requests: mpsc::UnboundedSender<WorkerRequest>,
}

/// Why a worker could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("cannot start the worker thread: {0}")]
    Thread(#[from] std::io::Error),
}

impl WorkerHandle {
    /// The worker's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Dispatches a request and waits for the response head; the body
    /// streams after.
    pub async fn fetch(
        &self,
        request: http::Request<Body>,
        url: String,
        request_id: String,
    ) -> Result<http::Response<Body>, DispatchError> {
        let (respond, response) = oneshot::channel();
        self.requests
            .send(WorkerRequest { request, url, request_id, respond })
            .map_err(|_| DispatchError::WorkerGone)?;
        response.await.map_err(|_| DispatchError::WorkerGone)?
    }
}

/// Loads the worker on a new thread. Returns once its modules are evaluated
/// (or failed to), so load errors reach the caller. If the isolate later
/// fails, the thread logs why and starts a fresh one from the same source.
pub fn spawn(source: WorkerSource, options: WorkerOptions) -> Result<WorkerHandle, SpawnError> {
    let (tx, queue_rx) = std::sync::mpsc::sync_channel(1);
    let name: Arc<str> = Arc::from(options.name.as_str());
    let (loaded_tx, loaded_rx) = std::sync::mpsc::sync_channel::<Result<(), LoadError>>(1);
    let thread_name = format!("worker:{}", options.name);
    thread::Builder::new().name(thread_name).spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime builds");
        runtime.block_on(async move {
            let (requests, queue) = request_queue();
            let _ = tx.send(requests);
            let mut loaded_tx = Some(loaded_tx);
            loop {
                let isolate = match WorkerIsolate::load(&source, &options, queue.clone()).await {
                    Ok(isolate) => isolate,
                    Err(err) => {
                        match loaded_tx.take() {
                            Some(loaded_tx) => {
                                let _ = loaded_tx.send(Err(err));
                            }
                            None => tracing::error!(worker = %options.name, "cannot restart the worker: {err}"),
                        }
                        return;
                    }
                };
                if let Some(loaded_tx) = loaded_tx.take() {
                    let _ = loaded_tx.send(Ok(()));
                }
                match isolate.serve().await {
                    Ok(()) => return,
                    Err(err) => tracing::error!(worker = %options.name, "isolate failed, starting a new one: {err}"),
                }
            }
        });
    })?;
    let requests = queue_rx.recv().expect("the worker thread sends its queue first");
    loaded_rx.recv().expect("the worker thread reports its load")?;
    Ok(WorkerHandle { name, requests })
}
