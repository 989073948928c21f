//! Batching without waiting for company, for one thread's requests to one server.
//!
//! A request made while no batch is in flight runs at once, alone. Requests made while one
//! is in flight queue; when it is answered, the first of them (still wanted) leads the next
//! batch, made of itself and everyone queued then. So an idle caller pays nothing, and under
//! load each batch holds whatever arrived during the one before: the busier, the fewer
//! executions per request.
//!
//! Single-threaded (an HTTP worker's requests): the queue is a `RefCell`, and the futures are
//! not `Send`. A request's future may be dropped at any point (its client went away):
//! - a leader dropped mid-batch: the requests in its batch get `None` (the caller then does
//!   the work another way), and the next queued request leads;
//! - a queued request dropped after it was handed the lead, before it ran: it hands the lead
//!   on in turn. Nobody is ever left waiting for a batch that nobody runs.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;

use tokio::sync::oneshot;

pub(super) struct Batcher<Q, A> {
    queue: RefCell<Queue<Q, A>>,
    /// Requests per batch at most; more queued wait for the next one.
    max: usize,
}

struct Queue<Q, A> {
    /// A batch is in flight: its leader hands over when it is done.
    busy: bool,
    waiting: VecDeque<(Q, oneshot::Sender<Reply<Q, A>>)>,
}

enum Reply<Q, A> {
    /// The answer, from another request's batch.
    Done(A),
    /// The batch before is answered: this request (given back) leads the next.
    Lead(Q),
}

impl<Q, A> Batcher<Q, A> {
    pub fn new(max: usize) -> Self {
        Batcher { queue: RefCell::new(Queue { busy: false, waiting: VecDeque::new() }), max: max.max(1) }
    }

    /// Runs `q` in a batch; `exec` runs a batch (this request first) and answers its requests
    /// in order. `None`: the batch `q` was in was abandoned, or `exec` gave no answer for it.
    pub async fn run<Fut: Future<Output = Vec<A>>>(&self, q: Q, exec: impl FnOnce(Vec<Q>) -> Fut) -> Option<A> {
        let queued = {
            let mut st = self.queue.borrow_mut();
            if st.busy {
                let (reply, wait) = oneshot::channel();
                st.waiting.push_back((q, reply));
                Err(Wait { batcher: self, wait })
            } else {
                st.busy = true;
                Ok(q)
            }
        };
        let mine = match queued {
            Ok(q) => q,
            Err(mut queued) => match (&mut queued.wait).await {
                Ok(Reply::Done(a)) => return Some(a),
                // Taken: dropping `queued` now hands nothing on.
                Ok(Reply::Lead(q)) => q,
                Err(_) => return None,
            },
        };
        // Leading. However this ends (dropped included), the next queued request leads then.
        let _handover = Handover(self);
        let (mut batch, replies): (Vec<Q>, Vec<_>) = {
            let mut st = self.queue.borrow_mut();
            let n = st.waiting.len().min(self.max - 1);
            std::iter::once((mine, None)).chain(st.waiting.drain(..n).map(|(q, r)| (q, Some(r)))).unzip()
        };
        batch.shrink_to_fit();
        let mut answers = exec(batch).await.into_iter();
        let mine = answers.next();
        for (reply, a) in replies.into_iter().flatten().zip(answers) {
            let _ = reply.send(Reply::Done(a));
        }
        mine
    }

    /// The first queued request still wanted leads the next batch; with none, the next
    /// request runs at once.
    fn hand_over(&self) {
        let mut st = self.queue.borrow_mut();
        while let Some((q, reply)) = st.waiting.pop_front() {
            if reply.send(Reply::Lead(q)).is_ok() {
                return;
            }
        }
        st.busy = false;
    }
}

/// A queued request. Dropped (its request went away), it hands on the lead if it had just
/// been given it.
struct Wait<'b, Q, A> {
    batcher: &'b Batcher<Q, A>,
    wait: oneshot::Receiver<Reply<Q, A>>,
}

impl<Q, A> Drop for Wait<'_, Q, A> {
    fn drop(&mut self) {
        self.wait.close();
        if let Ok(Reply::Lead(_)) = self.wait.try_recv() {
            self.batcher.hand_over();
        }
    }
}

/// Ends a leader's turn, however it ends.
struct Handover<'b, Q, A>(&'b Batcher<Q, A>);

impl<Q, A> Drop for Handover<'_, Q, A> {
    fn drop(&mut self) {
        self.0.hand_over();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// Batches as they ran; each batch is held until its gate is opened.
    #[derive(Default)]
    struct Server {
        ran: RefCell<Vec<Vec<u32>>>,
        gates: RefCell<Vec<oneshot::Sender<()>>>,
    }

    impl Server {
        fn exec(self: &Rc<Self>, batch: Vec<u32>) -> impl Future<Output = Vec<u32>> {
            let (open, gate) = oneshot::channel();
            self.ran.borrow_mut().push(batch.clone());
            self.gates.borrow_mut().push(open);
            async move {
                let _ = gate.await;
                batch.iter().map(|q| q * 10).collect()
            }
        }

        /// Opens the gate of batch `i`.
        fn open(&self, i: usize) {
            let gate = std::mem::replace(&mut self.gates.borrow_mut()[i], oneshot::channel().0);
            let _ = gate.send(());
        }
    }

    /// Runs `f` on one thread, as an HTTP worker does; a request left waiting fails the test.
    fn local(f: impl Future<Output = ()>) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let limited = async { tokio::time::timeout(std::time::Duration::from_secs(5), f).await };
        tokio::task::LocalSet::new().block_on(&rt, limited).expect("a request was left waiting");
    }

    /// Lets every spawned task run until it waits.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    fn batcher_and_server(max: usize) -> (Rc<Batcher<u32, u32>>, Rc<Server>) {
        (Rc::new(Batcher::new(max)), Rc::new(Server::default()))
    }

    fn spawn(b: &Rc<Batcher<u32, u32>>, s: &Rc<Server>, q: u32) -> tokio::task::JoinHandle<Option<u32>> {
        let (b, s) = (b.clone(), s.clone());
        tokio::task::spawn_local(async move { b.run(q, |batch| s.exec(batch)).await })
    }

    #[test]
    fn a_lone_request_runs_at_once_and_those_arriving_meanwhile_run_together_each_with_its_own_answer() {
        local(async {
            let (b, s) = batcher_and_server(100);
            let first = spawn(&b, &s, 1);
            settle().await;
            assert_eq!(*s.ran.borrow(), [vec![1]], "alone, at once");
            let rest: Vec<_> = (2..=6).map(|q| spawn(&b, &s, q)).collect();
            settle().await;
            assert_eq!(s.ran.borrow().len(), 1, "nothing else runs while a batch is in flight");
            s.open(0);
            assert_eq!(first.await.unwrap(), Some(10));
            settle().await;
            assert_eq!(s.ran.borrow()[1], [2, 3, 4, 5, 6], "one batch, led by the first queued");
            s.open(1);
            for (q, h) in (2..=6).zip(rest) {
                assert_eq!(h.await.unwrap(), Some(q * 10), "request {q} gets its own answer");
            }
            // Idle again: the next request runs at once, alone.
            let last = spawn(&b, &s, 7);
            settle().await;
            assert_eq!(s.ran.borrow()[2], [7]);
            s.open(2);
            assert_eq!(last.await.unwrap(), Some(70));
        });
    }

    #[test]
    fn a_batch_holds_at_most_max_requests() {
        local(async {
            let (b, s) = batcher_and_server(3);
            let hs: Vec<_> = (1..=8).map(|q| spawn(&b, &s, q)).collect();
            for i in 0..4 {
                settle().await;
                s.open(i);
            }
            for (q, h) in (1..=8).zip(hs) {
                assert_eq!(h.await.unwrap(), Some(q * 10));
            }
            assert_eq!(*s.ran.borrow(), [vec![1], vec![2, 3, 4], vec![5, 6, 7], vec![8]]);
        });
    }

    #[test]
    fn a_leader_dropped_mid_batch_fails_only_its_batch_and_the_next_queued_request_leads() {
        local(async {
            let (b, s) = batcher_and_server(100);
            let first = spawn(&b, &s, 1);
            settle().await;
            let second = spawn(&b, &s, 2);
            settle().await;
            s.open(0);
            first.await.unwrap();
            settle().await;
            assert_eq!(s.ran.borrow()[1], [2]);
            let third = spawn(&b, &s, 3);
            let fourth = spawn(&b, &s, 4);
            settle().await;
            // Request 2 leads the batch in flight; it goes away.
            second.abort();
            settle().await;
            assert_eq!(s.ran.borrow()[2], [3, 4], "the queued requests run without waiting for the abandoned batch");
            s.open(2);
            assert_eq!(third.await.unwrap(), Some(30));
            assert_eq!(fourth.await.unwrap(), Some(40));

            // A request in an abandoned batch (not its leader) gets None.
            let lead = spawn(&b, &s, 5);
            settle().await;
            let member_lead = spawn(&b, &s, 6);
            let member = spawn(&b, &s, 7);
            settle().await;
            s.open(3);
            lead.await.unwrap();
            settle().await;
            assert_eq!(s.ran.borrow()[4], [6, 7]);
            member_lead.abort();
            assert_eq!(member.await.unwrap(), None, "abandoned with its leader: the caller reads another way");
        });
    }

    #[test]
    fn a_queued_request_dropped_just_after_being_given_the_lead_hands_it_on() {
        local(async {
            let (b, s) = batcher_and_server(100);
            let first = spawn(&b, &s, 1);
            settle().await;
            // Request 2 is polled once by hand: it queues, and is then never polled again.
            let mut second = Box::pin(b.run(2, |batch| s.exec(batch)));
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            assert!(second.as_mut().poll(&mut cx).is_pending());
            let third = spawn(&b, &s, 3);
            settle().await;
            // The batch is answered: request 1 hands the lead to request 2, which goes away
            // before it runs.
            s.open(0);
            assert_eq!(first.await.unwrap(), Some(10));
            assert_eq!(s.ran.borrow().len(), 1, "the lead is request 2's, untaken");
            drop(second);
            settle().await;
            assert_eq!(s.ran.borrow()[1], [3], "request 3 leads in its place");
            s.open(1);
            assert_eq!(third.await.unwrap(), Some(30));
            assert_eq!(s.ran.borrow().len(), 2, "request 2 never ran");
        });
    }

    #[test]
    fn a_request_the_batch_gave_no_answer_for_gets_none() {
        local(async {
            let b: Rc<Batcher<u32, u32>> = Rc::new(Batcher::new(100));
            let (open, gate) = oneshot::channel::<()>();
            let lead = tokio::task::spawn_local({
                let b = b.clone();
                async move {
                    b.run(1, |batch| async move {
                        let _ = gate.await;
                        batch.into_iter().take(2).collect()
                    })
                    .await
                }
            });
            settle().await;
            let queued: Vec<_> = (2..=4)
                .map(|q| {
                    let b = b.clone();
                    tokio::task::spawn_local(async move { b.run(q, |batch| async move { batch.into_iter().take(2).collect() }).await })
                })
                .collect();
            settle().await;
            let _ = open.send(());
            assert_eq!(lead.await.unwrap(), Some(1));
            let got: Vec<Option<u32>> = join_in_order(queued).await;
            assert_eq!(got, [Some(2), Some(3), None], "two answers for a batch of three");
        });
    }

    async fn join_in_order(hs: Vec<tokio::task::JoinHandle<Option<u32>>>) -> Vec<Option<u32>> {
        let mut out = Vec::new();
        for h in hs {
            out.push(h.await.unwrap());
        }
        out
    }
}
