//! Tests of the vendored glommio's executor loop where CoreMQ patched it
//! (vendor/glommio/COREMQ-PATCH.md). The end-to-end tests would notice a
//! break there only now and then (a lost wake-up or a missing preemption
//! shows as a shard that stalls or lags); these provoke it on purpose.

use glommio::channels::shared_channel;
use glommio::{LocalExecutorBuilder, Placement};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// An unbound executor named `name`, with the io memory a shard gets (so
/// that it starts under the locked-memory limit).
fn executor(name: &str) -> LocalExecutorBuilder {
    LocalExecutorBuilder::new(Placement::Unbound)
        .name(name)
        .io_memory(crate::IO_MEMORY)
}

/// Runs `f` to its end, or panics with `stalled()` if it has not ended in
/// `limit` (a backstop for a hang, not a speed limit).
fn finishes_within(
    limit: Duration,
    f: impl FnOnce() + Send + 'static,
    stalled: impl Fn() -> String,
) {
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        f();
        let _ = done_tx.send(());
    });
    if done_rx.recv_timeout(limit).is_err() {
        panic!("{}", stalled());
    }
}

/// Guards the preemption timer that busy passes of the executor loop now
/// keep armed while it is pending instead of re-submitting it: once it has
/// fired it must be armed again, or a shard that always has a runnable task
/// would never again be told to yield (and reap its sockets' completions).
/// A task that never parks spins until `need_preempt()` and yields, 50
/// times, with a 1 ms timer. Taking out the re-arm (keeping the fired timer)
/// made it stall after the first preemption.
#[test]
fn a_busy_executor_is_told_to_yield_again_and_again() {
    const PREEMPTIONS: usize = 50;
    const GIVE_UP: Duration = Duration::from_secs(30);
    let seen = Arc::new(AtomicUsize::new(0));
    let counted = seen.clone();
    finishes_within(
        GIVE_UP + Duration::from_secs(30),
        move || {
            executor("preempt")
                .preempt_timer(Duration::from_millis(1))
                .spawn(move || async move {
                    let start = Instant::now();
                    while counted.load(Ordering::Relaxed) < PREEMPTIONS {
                        let ex = glommio::executor();
                        while !ex.need_preempt() {
                            if start.elapsed() > GIVE_UP {
                                return;
                            }
                            std::hint::spin_loop();
                        }
                        counted.fetch_add(1, Ordering::Relaxed);
                        ex.yield_if_needed().await;
                    }
                })
                .expect("executor starts under the locked-memory limit")
                .join()
                .unwrap();
        },
        || "the executor thread did not end".to_string(),
    );
    assert_eq!(
        seen.load(Ordering::Relaxed),
        PREEMPTIONS,
        "told to yield only {} times in {GIVE_UP:?}: the preemption timer was not armed again",
        seen.load(Ordering::Relaxed)
    );
}

/// Guards the sleep/notify handshake of the vendored glommio (a `SeqCst`
/// fence on each side instead of a `membarrier` on every park,
/// vendor/glommio/COREMQ-PATCH.md). Executors in a ring (more of them
/// than this machine's two cores) pass tokens through capacity-1 shared
/// channels, so nearly every hop parks the receiver and, when a channel
/// is full, the sender too; nothing else runs on them, not even a timer.
/// A lost wake-up leaves every executor asleep for good: the ring stalls
/// and the test reports how far it got. With the two fences taken out it
/// stalled in 2 of 3 runs (after 28–33 k hops, of 150 k); with them, in
/// none of 11 (release and debug builds).
#[test]
fn executors_passing_tokens_never_miss_a_wake_up() {
    const EXECUTORS: usize = 3;
    const TOKENS: usize = 3;
    const HOPS: usize = 50_000;
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for _ in 0..EXECUTORS {
        let (tx, rx) = shared_channel::new_bounded::<usize>(1);
        senders.push(Some(tx));
        receivers.push(Some(rx));
    }
    let finished = Arc::new(AtomicUsize::new(0));
    let hops = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for i in 0..EXECUTORS {
        // Executor i receives on channel i and sends on channel i + 1.
        let rx = receivers[i].take().unwrap();
        let tx = senders[(i + 1) % EXECUTORS].take().unwrap();
        let (finished, hops) = (finished.clone(), hops.clone());
        let h = executor(&format!("ring-{i}"))
            .spawn(move || async move {
                // Each end waits for its peer to connect: both at once,
                // or the ring waits on itself.
                let (rx, tx) = futures_lite::future::zip(rx.connect(), tx.connect()).await;
                if i == 0 {
                    for _ in 0..TOKENS {
                        tx.send(HOPS).await.unwrap();
                    }
                }
                // Ends when the previous executor drops its sender: the
                // last token's end closes the ring one executor at a time.
                while let Some(left) = rx.recv().await {
                    hops.fetch_add(1, Ordering::Relaxed);
                    if left > 0 {
                        tx.send(left - 1).await.unwrap();
                    } else if finished.fetch_add(1, Ordering::Relaxed) + 1 == TOKENS {
                        break;
                    }
                }
            })
            .expect("executor starts under the locked-memory limit");
        handles.push(h);
    }
    // The ring needs a few seconds at most.
    let (f, h) = (finished.clone(), hops.clone());
    finishes_within(
        Duration::from_secs(60),
        move || {
            for h in handles {
                h.join().unwrap();
            }
        },
        move || {
            format!(
                "the ring stalled after {} of {} hops ({} of {TOKENS} tokens done): \
                 an executor slept through a wake-up",
                h.load(Ordering::Relaxed),
                TOKENS * (HOPS + 1),
                f.load(Ordering::Relaxed)
            )
        },
    );
    assert_eq!(hops.load(Ordering::Relaxed), TOKENS * (HOPS + 1));
}

/// Guards the timer an executor arms when it goes to sleep, which is now
/// kept armed across wake-ups instead of cancelled by the next busy pass
/// (vendor/glommio/COREMQ-PATCH.md): a kept timer must still fire, and a
/// later sleep must still wake for a timer due earlier than the one kept.
/// The executor parks three times with a timer pending while another
/// executor sends it messages; each race below is between a timer and a
/// message sent long after it is due, so the message wins only if the
/// executor slept through the timer. Keeping an armed timer whatever the
/// next deadline (`keep` true whenever it is pending) made the first race go
/// to the message: a later timer armed for an earlier park was kept.
#[test]
fn a_sleeping_executor_wakes_for_its_next_timer_whatever_it_armed_before() {
    use futures_lite::future;
    use glommio::timer::{sleep, Timer};
    let (tx, rx) = shared_channel::new_bounded::<u32>(4);
    let start = Instant::now();
    // Sends message n at `AT[n - 1]` after the start.
    const AT: [Duration; 3] = [
        Duration::from_millis(100),
        Duration::from_millis(1500),
        Duration::from_millis(4000),
    ];
    let poker = executor("poker")
        .spawn(move || async move {
            let tx = tx.connect().await;
            for (n, at) in AT.iter().enumerate() {
                sleep(at.saturating_sub(start.elapsed())).await;
                if tx.send(n as u32 + 1).await.is_err() {
                    return;
                }
            }
        })
        .expect("executor starts under the locked-memory limit");
    let sleeper = executor("sleeper")
        .spawn(move || async move {
            let rx = rx.connect().await;
            // A far timer, pending throughout (a shard always has one).
            glommio::spawn_local(sleep(Duration::from_secs(60))).detach();
            let near = Timer::new(Duration::from_millis(300));
            // Parks with `near` as the next timer: armed for this sleep,
            // woken by message 1.
            assert_eq!(rx.recv().await, Some(1));
            // Parks again with the same next timer: the armed one is kept
            // and must fire (message 2 comes 1.2 s after it is due).
            let first = future::or(async { rx.recv().await.map(|_| "message") }, async {
                near.await;
                Some("timer")
            })
            .await;
            if first != Some("timer") {
                // Message 2 went to the race.
                return (first, None);
            }
            // Parks with only the far timer pending: armed; woken by message 2.
            assert_eq!(rx.recv().await, Some(2));
            // A nearer timer than the one armed: the sleep must wake for it
            // (message 3 comes seconds later).
            let second = future::or(async { rx.recv().await.map(|_| "message") }, async {
                sleep(Duration::from_millis(20)).await;
                Some("timer")
            })
            .await;
            (first, second)
        })
        .expect("executor starts under the locked-memory limit");
    let (first, second) = sleeper.join().unwrap();
    drop(poker.join());
    assert_eq!(
        first,
        Some("timer"),
        "the executor slept through its next timer: the kept timer did not fire, \
         or one armed for an earlier park that fires later was kept"
    );
    assert_eq!(
        second,
        Some("timer"),
        "a timer due before the one kept armed did not wake the executor"
    );
}

/// Guards the receiving side of a shared channel, which now tells the
/// sending executor only when the channel was full before it took a value
/// (vendor/glommio/COREMQ-PATCH.md): a sender waiting for room must still be
/// woken. The sender fills a channel of 4 as fast as it can; the receiver
/// naps on a timer every few values, so that the sender finds it full and
/// its executor parks, again and again. A missed wake-up leaves both asleep
/// (the receiver waits for values the sender never gets to send). Never
/// notifying made it stall on the first full channel.
#[test]
fn a_sender_waiting_for_room_is_woken_when_the_receiver_takes_a_value() {
    const VALUES: u32 = 20_000;
    let (tx, rx) = shared_channel::new_bounded::<u32>(4);
    let received = Arc::new(AtomicUsize::new(0));
    let count = received.clone();
    let sender = executor("filler")
        .spawn(move || async move {
            let tx = tx.connect().await;
            for v in 0..VALUES {
                tx.send(v).await.unwrap();
            }
        })
        .expect("executor starts under the locked-memory limit");
    let receiver = executor("napper")
        .spawn(move || async move {
            let rx = rx.connect().await;
            for v in 0..VALUES {
                assert_eq!(rx.recv().await, Some(v), "values arrive in order");
                count.fetch_add(1, Ordering::Relaxed);
                if v % 8 == 7 {
                    glommio::timer::sleep(Duration::from_micros(50)).await;
                }
            }
        })
        .expect("executor starts under the locked-memory limit");
    let r = received.clone();
    finishes_within(
        Duration::from_secs(60),
        move || {
            receiver.join().unwrap();
            sender.join().unwrap();
        },
        move || {
            format!(
                "stalled after {} of {VALUES} values: the sender slept through the room made for it",
                r.load(Ordering::Relaxed)
            )
        },
    );
    assert_eq!(received.load(Ordering::Relaxed), VALUES as usize);
}
