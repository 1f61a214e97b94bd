use crate::Error;
use futures::channel::oneshot;
use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

/// Resolves when a journal write is durable, or failed. An in-memory journal hands out ready
/// ones; a journal with a writer thread resolves them at its group commit.
#[derive(Debug)]
#[must_use = "a write is only durable once this resolves"]
pub struct Durable(Inner);

#[derive(Debug)]
enum Inner {
    Ready(Option<Result<(), Error>>),
    Waiting(oneshot::Receiver<Result<(), Error>>),
}

impl Durable {
    pub fn ready(result: Result<(), Error>) -> Self {
        Durable(Inner::Ready(Some(result)))
    }

    /// A pending write and the sender its writer completes.
    pub fn pending() -> (oneshot::Sender<Result<(), Error>>, Self) {
        let (tx, rx) = oneshot::channel();
        (tx, Durable(Inner::Waiting(rx)))
    }

    /// The result if it is already known, without waiting.
    pub fn try_result(&mut self) -> Option<Result<(), Error>> {
        match &mut self.0 {
            Inner::Ready(result) => result.take(),
            Inner::Waiting(rx) => match rx.try_recv() {
                Ok(result) => result,
                Err(_) => Some(Err(Error::Closed)),
            },
        }
    }
}

impl Future for Durable {
    type Output = Result<(), Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().0 {
            Inner::Ready(result) => Poll::Ready(result.take().unwrap_or(Err(Error::Closed))),
            Inner::Waiting(rx) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or(Err(Error::Closed))),
        }
    }
}
