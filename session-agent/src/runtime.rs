//! Blocking work (store commits that fsync, netlink, map walks) run off the
//! async runtime, so its workers go on serving and polling meanwhile.

use std::future::Future;

/// The work ended without an answer (it panicked, or the runtime is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the operation did not finish: {0}")]
pub struct Unfinished(#[from] tokio::task::JoinError);

impl From<Unfinished> for std::io::Error {
    fn from(e: Unfinished) -> Self {
        std::io::Error::other(e)
    }
}

/// Runs `op` on a blocking thread, driving its future there on the current runtime.
pub async fn off_runtime<T, F, Fut>(op: F) -> Result<T, Unfinished>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let rt = tokio::runtime::Handle::current();
    Ok(tokio::task::spawn_blocking(move || rt.block_on(op())).await?)
}
