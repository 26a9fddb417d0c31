//! The list markers of a watch as signals to the controller. The first
//! complete list says the watch is synced: from then on every change comes
//! to it as an event, so reconciling may begin (as controller-runtime waits
//! for its caches). Each later list is a relist after the watch failed; it
//! shows nothing of an object deleted in the gap, so the controller looks
//! at every datasource once.

use futures::channel::{mpsc, oneshot};
use futures::{Stream, TryStreamExt};
use kube::runtime::watcher;

/// `events` unchanged; their first `InitDone` fires `synced`, each later one
/// sends on `relisted`.
pub fn signal_lists<K, S>(
    events: S,
    synced: oneshot::Sender<()>,
    relisted: mpsc::UnboundedSender<()>,
) -> impl Stream<Item = watcher::Result<watcher::Event<K>>>
where
    S: Stream<Item = watcher::Result<watcher::Event<K>>>,
{
    let mut synced = Some(synced);
    events.inspect_ok(move |event| {
        if matches!(event, watcher::Event::InitDone) {
            match synced.take() {
                Some(first) => {
                    let _ = first.send(());
                }
                None => {
                    let _ = relisted.unbounded_send(());
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{StreamExt, stream};
    use k8s_openapi::api::core::v1::Secret;

    fn list() -> Vec<watcher::Result<watcher::Event<Secret>>> {
        vec![
            Ok(watcher::Event::Init),
            Ok(watcher::Event::InitApply(Secret::default())),
            Ok(watcher::Event::InitDone),
        ]
    }

    #[tokio::test]
    async fn the_first_list_syncs_and_each_later_one_is_a_relist() {
        let (synced, mut is_synced) = oneshot::channel();
        let (relisted, relists) = mpsc::unbounded();
        let mut events = list();
        events.push(Ok(watcher::Event::Apply(Secret::default())));
        events.extend(list());
        events.extend(list());
        let passed = signal_lists(stream::iter(events), synced, relisted)
            .collect::<Vec<_>>()
            .await;

        assert_eq!(passed.len(), 10, "every event passes through");
        assert_eq!(is_synced.try_recv(), Ok(Some(())));
        // The stream is gone, and its sender with it: exactly two relists.
        assert_eq!(relists.collect::<Vec<_>>().await, vec![(), ()]);
    }

    #[tokio::test]
    async fn a_watch_that_never_lists_never_syncs() {
        let (synced, mut is_synced) = oneshot::channel();
        let (relisted, _relists) = mpsc::unbounded();
        let events = vec![Ok(watcher::Event::<Secret>::Init)];
        let mut passed = Box::pin(signal_lists(stream::iter(events), synced, relisted));
        assert!(passed.next().await.is_some());
        assert_eq!(is_synced.try_recv(), Ok(None), "not synced before InitDone");
    }
}
