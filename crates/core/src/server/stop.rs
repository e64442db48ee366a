//! A one-way "stop now" signal: a listener and the tasks it spawned, or a runtime and its
//! background tasks, all end when it fires.

use tokio::sync::watch;

/// A one-way "stop now" signal, cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct ShutdownSignal {
    rx: watch::Receiver<bool>,
}

impl ShutdownSignal {
    /// A signal and the sender that fires it.
    pub(crate) fn new() -> (watch::Sender<bool>, ShutdownSignal) {
        let (tx, rx) = watch::channel(false);
        (tx, ShutdownSignal { rx })
    }

    /// Resolves once the signal fired (or its sender is gone).
    pub(crate) async fn fired(&mut self) {
        let _ = self.rx.wait_for(|stop| *stop).await;
    }

    /// Whether it fired.
    pub(crate) fn is_fired(&self) -> bool {
        *self.rx.borrow()
    }
}
