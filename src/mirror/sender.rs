//! One Produce stream per target broker, shared by the copiers of the
//! partitions it leads.
//!
//! Kafka takes one batch per partition per Produce request but any number
//! of partitions, and brokers pay per request: batches queued by several
//! copiers at once go out together. A partition's batches leave in the
//! order its copier queued them (a request holds at most one of them, and
//! requests go out in order on one pipelined connection), so idempotent
//! sequences stay in order.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use tokio::sync::{mpsc, oneshot};

use crate::client::{Client, produce_answers, produce_request};
use crate::error::{Error, Kind, Result};
use crate::upstream::UpstreamConn;

/// How one batch fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Landed {
    pub error_code: i16,
    pub base_offset: i64,
}

pub type Answer = oneshot::Receiver<Result<Landed>>;

/// Batches gathered into one request at most (more wait for the next).
const MAX_GATHERED: usize = 512;
/// Requests in flight on the connection at most, as a Kafka producer
/// keeps (5). Brokers work through a connection's requests one by one:
/// more in flight only lengthens the queue, while batches held back here
/// meanwhile go out together, one per partition per request. Measured on
/// benches/mirror.sh: with no limit each request carried one batch.
const MAX_IN_FLIGHT: usize = 5;

struct Queued {
    topic: Arc<str>,
    partition: i32,
    records: Bytes,
    answer: oneshot::Sender<Result<Landed>>,
}

#[derive(Clone)]
pub struct BatchSender {
    queue: mpsc::UnboundedSender<Queued>,
    conn: UpstreamConn,
}

impl BatchSender {
    fn start(target: Client, conn: UpstreamConn) -> BatchSender {
        let (queue, queued) = mpsc::unbounded_channel();
        tokio::spawn(run(target, conn.clone(), queued));
        BatchSender { queue, conn }
    }

    fn is_closed(&self) -> bool {
        self.queue.is_closed() || self.conn.is_closed()
    }

    /// Queues one batch; the answer comes once its request is answered.
    pub fn send(&self, topic: &Arc<str>, partition: i32, records: Bytes) -> Result<Answer> {
        let (answer, answered) = oneshot::channel();
        self.queue
            .send(Queued {
                topic: topic.clone(),
                partition,
                records,
                answer,
            })
            .map_err(|_| Error::klink(Kind::Closed, "mirror sender stopped"))?;
        Ok(answered)
    }
}

/// The senders of one target cluster, by broker.
#[derive(Default)]
pub struct SenderPool {
    senders: Mutex<HashMap<i32, BatchSender>>,
}

impl SenderPool {
    /// The broker's stream, on a connection of its own: the client's other
    /// requests (leaders, log ends) never queue behind a window of Produce
    /// requests. (Several streams per broker, a partition always on the
    /// same, copied no faster on benches/mirror.sh and cost more CPU.)
    pub async fn get(&self, target: &Client, broker: i32) -> Result<BatchSender> {
        let key = broker;
        if let Some(sender) = self.lock().get(&key).filter(|s| !s.is_closed()) {
            return Ok(sender.clone());
        }
        let conn = target.new_broker_conn(broker).await?;
        let mut senders = self.lock();
        // Another copier may have started one meanwhile.
        if let Some(sender) = senders.get(&key).filter(|s| !s.is_closed()) {
            return Ok(sender.clone());
        }
        let sender = BatchSender::start(target.clone(), conn);
        senders.insert(key, sender.clone());
        Ok(sender)
    }

    /// Forgets a broker's sender (its connection failed).
    pub fn drop_broker(&self, broker: i32) {
        self.lock().remove(&broker);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, BatchSender>> {
        self.senders.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn run(target: Client, conn: UpstreamConn, mut queued: mpsc::UnboundedReceiver<Queued>) {
    let version = target.versions().produce;
    let mut waiting: Vec<Queued> = Vec::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    loop {
        if waiting.is_empty() {
            match queued.recv().await {
                Some(first) => waiting.push(first),
                None => return,
            }
        }
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        while waiting.len() < MAX_GATHERED {
            match queued.try_recv() {
                Ok(more) => waiting.push(more),
                Err(_) => break,
            }
        }
        // One batch per partition in this request; the rest keep their
        // order for the next one.
        let mut taken = HashSet::new();
        let (now, later): (Vec<Queued>, Vec<Queued>) = waiting
            .drain(..)
            .partition(|q| taken.insert((q.topic.clone(), q.partition)));
        waiting = later;
        let request = request_for(&now);
        let sent = async {
            let frame = target.encode(&request, version)?;
            conn.send(frame, true)
                .await?
                .ok_or_else(|| Error::klink(Kind::Protocol, "produce without reply"))
        };
        match sent.await {
            Ok(reply) => {
                let target = target.clone();
                tokio::spawn(async move {
                    let reply = reply.await;
                    drop(slot);
                    let answer = match reply {
                        Ok(Ok(frame)) => target.decode::<ProduceRequest>(&frame, version),
                        Ok(Err(e)) => Err(e),
                        Err(_) => Err(Error::upstream(
                            target.cluster_name(),
                            Kind::Closed,
                            "target connection dropped",
                        )),
                    };
                    distribute(now, answer, target.cluster_name());
                });
            }
            Err(e) => {
                for q in now {
                    let _ = q.answer.send(Err(e.clone()));
                }
                // A connection that cannot take requests takes no more.
                for q in waiting.drain(..) {
                    let _ = q.answer.send(Err(e.clone()));
                }
                return;
            }
        }
    }
}

fn request_for(batches: &[Queued]) -> ProduceRequest {
    let batches = batches
        .iter()
        .map(|q| (&*q.topic, q.partition, q.records.clone()));
    produce_request(batches, -1, 30_000)
}

fn distribute(batches: Vec<Queued>, answer: Result<ProduceResponse>, cluster: &Arc<str>) {
    let response = match answer {
        Ok(response) => response,
        Err(e) => {
            for q in batches {
                let _ = q.answer.send(Err(e.clone()));
            }
            return;
        }
    };
    let landed = produce_answers(&response);
    for q in batches {
        let result = landed
            .get(&(&*q.topic, q.partition))
            .map(|&(error_code, base_offset)| Landed {
                error_code,
                base_offset,
            })
            .ok_or_else(|| {
                Error::upstream(
                    cluster,
                    Kind::Protocol,
                    format!("Produce answer without {}/{}", q.topic, q.partition),
                )
            });
        let _ = q.answer.send(result);
    }
}
