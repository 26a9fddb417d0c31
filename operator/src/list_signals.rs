//! The list markers of a watch as signals to the controller. The first
//! complete list says the watch is synced: from then on every change comes
//! to it as an event, so reconciling may begin (as controller-runtime waits
//! for its caches). Each later list is a relist after the watch failed; it
//! shows nothing of an object deleted in the gap, so the controller looks
//! at every datasource once.

use std::future::poll_fn;
use std::task::Poll;
use std::time::Duration;

use futures::channel::{mpsc, oneshot};
use futures::{FutureExt, Stream, TryStreamExt};
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

/// Returns once every watch in `waiting` has listed (or its stream has
/// ended). Every `every` until then, `still_waiting` gets the names of the
/// watches that have not: a watch that cannot list (the operator may not
/// list Secrets) otherwise shows only as the watcher's retries, while no
/// datasource is reconciled.
pub async fn until_listed(
    mut waiting: Vec<(&'static str, oneshot::Receiver<()>)>,
    every: Duration,
    mut still_waiting: impl FnMut(&[&'static str]),
) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        let all_listed = poll_fn(|cx| {
            waiting.retain_mut(|(_, listed)| listed.poll_unpin(cx).is_pending());
            if waiting.is_empty() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        tokio::select! {
            () = all_listed => return,
            _ = ticks.tick() => {
                let names: Vec<_> = waiting.iter().map(|(name, _)| *name).collect();
                still_waiting(&names);
            }
        }
    }
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

    #[tokio::test(start_paused = true)]
    async fn waiting_names_the_watches_that_have_not_listed_until_all_have() {
        let (secrets_synced, secrets_listed) = oneshot::channel();
        let (configmaps_synced, configmaps_listed) = oneshot::channel::<()>();
        let warned = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = warned.clone();
        let waiting = tokio::spawn(until_listed(
            vec![
                ("secrets", secrets_listed),
                ("configmaps", configmaps_listed),
            ],
            Duration::from_secs(30),
            move |names| log.lock().expect("lock").push(names.to_vec()),
        ));

        tokio::time::sleep(Duration::from_secs(31)).await;
        assert!(!waiting.is_finished(), "nothing listed yet");
        secrets_synced.send(()).expect("waiting");
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!waiting.is_finished(), "the ConfigMaps have not listed");
        // A watch whose stream ended (its sender dropped) waits no longer.
        drop(configmaps_synced);
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("done once both have listed or ended")
            .expect("no panic");

        assert_eq!(
            *warned.lock().expect("lock"),
            vec![vec!["secrets", "configmaps"], vec!["configmaps"]]
        );
    }
}
