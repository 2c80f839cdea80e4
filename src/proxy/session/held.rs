//! What a session notes about requests a promotion waits on: Produce
//! writes to mirroring topics (counted until answered, held behind a
//! fence) and offset commits (counted until answered, held while their
//! group is handed over).

use std::sync::Arc;

use bytes::Bytes;

use super::Session;
use crate::mirror::SentWrites;
use crate::wire::{RequestHeader, produce_acks};

impl Session {
    /// A Produce request's writes to mirroring topics, noted before they go
    /// out (the mirror may read them on the source before their answer is
    /// back), and the routes it goes by. A request for a topic behind a
    /// promotion's fence waits here until the fence lifts, then goes by the
    /// routes of that moment. Noting comes before looking at the fences: a
    /// promotion raises its fence before it counts the writes in flight,
    /// so every write either is counted or sees the fence.
    ///
    /// The last value says the request is acks=0 and writes a copied
    /// topic: it must go upstream with acks=1 (its answer swallowed, the
    /// client is owed none), so that a flip can wait for it like any other
    /// write. Sent as acks=0 it could land on the cluster a flip leaves
    /// after the drain read that cluster's end: a record the copy never
    /// carries over, and a hole that makes the two clusters' offsets differ.
    pub(super) async fn note_writes(
        &self,
        header: &RequestHeader,
        payload: &Bytes,
    ) -> (Arc<crate::route::Routes>, Option<SentWrites>, bool) {
        let name_of_id = |id: &uuid::Uuid| self.ctx.catalog.name_by_client_id(id);
        loop {
            let routes = self.ctx.routes.snapshot();
            let acks = produce_acks(payload, header).unwrap_or(-1);
            let watched = if routes.any_mirroring() {
                self.ctx.forwarded.sent(
                    &routes,
                    header.api_version,
                    payload,
                    // Answered once sent as acks=1.
                    if acks == 0 { 1 } else { acks },
                    name_of_id,
                )
            } else {
                None
            };
            let silenced = acks == 0 && watched.is_some();
            if !self.ctx.fences.any() {
                return (routes, watched, silenced);
            }
            let topics = crate::cutover::produce_topics(header.api_version, payload, name_of_id);
            let held = self.ctx.fences.holding(topics.iter().map(String::as_str));
            if held.is_empty() {
                return (routes, watched, silenced);
            }
            if let Some(watched) = watched {
                watched.cancel();
            }
            for lifted in held {
                lifted.wait().await;
            }
        }
    }

    /// An offset commit, counted in flight until answered; one for a group
    /// a promotion is handing over waits until the fence lifts, then goes
    /// by the routes of that moment (counted before the fence is looked
    /// at, as writes are).
    pub(super) async fn note_commit(
        &self,
        header: &RequestHeader,
        payload: &Bytes,
        routes: Arc<crate::route::Routes>,
    ) -> (
        Arc<crate::route::Routes>,
        Option<crate::cutover::CommitInFlight>,
    ) {
        let Some((group, topics)) = crate::cutover::offset_commit_of(header.api_version, payload)
        else {
            return (routes, None);
        };
        self.ctx.readers.note(&group, topics);
        let mut routes = routes;
        loop {
            let commit = self.ctx.fences.commit_started(&group);
            let Some(lifted) = self
                .ctx
                .fences
                .any()
                .then(|| self.ctx.fences.holding_group(&group))
                .flatten()
            else {
                return (routes, Some(commit));
            };
            drop(commit);
            lifted.wait().await;
            routes = self.ctx.routes.snapshot();
        }
    }
}
