//! GetContainerEvents, which kubelet's evented PLEG reads: an event for each container
//! created, started, stopped (its exit) and deleted, and for each pod made, stopped and
//! removed (the pod's id as the container id), with the pod's status and the statuses of
//! all its containers as they are then.
//!
//! Every subscriber has a backlog of [`BACKLOG`] events. Publishing never waits for a
//! subscriber: one that falls further behind loses nothing silently, its stream ends with
//! DATA_LOSS saying how many events it missed, and it must relist (kubelet's PLEG falls
//! back to relisting when the stream fails).

use podrun_proto::cri;
use tokio::sync::{broadcast, mpsc};

/// Events kept for a subscriber that has not read them yet.
pub const BACKLOG: usize = 1024;

pub struct Events(broadcast::Sender<cri::ContainerEventResponse>);

impl Default for Events {
    fn default() -> Self {
        Events::with_backlog(BACKLOG)
    }
}

impl Events {
    pub fn with_backlog(n: usize) -> Events {
        Events(broadcast::channel(n).0)
    }

    /// A new subscriber's events, from now on; the stream ends with DATA_LOSS if it falls
    /// more than the backlog behind.
    pub fn subscribe(&self) -> mpsc::Receiver<Result<cri::ContainerEventResponse, tonic::Status>> {
        let mut rx = self.0.subscribe();
        let (tx, out) = mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                let item = match rx.recv().await {
                    Ok(event) => Ok(event),
                    Err(broadcast::error::RecvError::Lagged(n)) => Err(tonic::Status::data_loss(
                        format!("{n} container events were lost: this subscriber fell behind; relist and subscribe again"),
                    )),
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let last = item.is_err();
                if tx.send(item).await.is_err() || last {
                    return;
                }
            }
        });
        out
    }

    /// Whether anyone listens: an event nobody reads need not be built.
    pub(crate) fn listened(&self) -> bool {
        self.0.receiver_count() > 0
    }

    pub(crate) fn publish(&self, event: cri::ContainerEventResponse) {
        // No subscriber is not an error.
        let _ = self.0.send(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> cri::ContainerEventResponse {
        cri::ContainerEventResponse {
            container_id: id.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn subscribers_get_events_in_order_and_one_that_falls_behind_is_told() {
        let events = Events::with_backlog(8);
        let mut reader = events.subscribe();
        let mut idle = events.subscribe();
        events.publish(event("a"));
        events.publish(event("b"));
        assert_eq!(reader.recv().await.unwrap().unwrap().container_id, "a");
        assert_eq!(reader.recv().await.unwrap().unwrap().container_id, "b");
        // The idle one never reads: publishing goes on regardless, then it is told.
        for i in 0..100 {
            events.publish(event(&i.to_string()));
        }
        let mut seen = Vec::new();
        loop {
            match idle.recv().await {
                Some(Ok(e)) => seen.push(e.container_id),
                Some(Err(status)) => {
                    assert_eq!(status.code(), tonic::Code::DataLoss);
                    assert!(status.message().contains("relist"));
                    break;
                }
                None => panic!("ended without saying events were lost: {seen:?}"),
            }
        }
        assert!(
            idle.recv().await.is_none(),
            "the stream ends after the loss"
        );
    }
}
