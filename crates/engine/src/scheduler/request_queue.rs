//! `RequestQueue`: the waiting requests in admission order for the configured policy (vLLM V1's
//! `FCFSRequestQueue` / `PriorityRequestQueue`).
//!
//! FCFS: arrival order; a preempted request goes back to the very front (it is the oldest work in flight).
//! Priority: lower `priority` first, then earlier `arrival`, then lower id. A preempted request is re-inserted by
//! that key, which puts it ahead of every later arrival of its priority; putting it ahead of more urgent requests
//! would invert the policy.

use std::collections::{BTreeSet, VecDeque};

use crate::config::SchedulingPolicy;
use crate::request::{Request, RequestId};

#[derive(Clone, Debug)]
pub enum RequestQueue {
    Fcfs(VecDeque<RequestId>),
    Priority(BTreeSet<(i32, u64, RequestId)>),
}

fn priority_key(r: &Request) -> (i32, u64, RequestId) {
    (r.priority, r.arrival, r.id)
}

impl RequestQueue {
    pub fn new(policy: SchedulingPolicy) -> Self {
        match policy {
            SchedulingPolicy::Fcfs => Self::Fcfs(VecDeque::new()),
            SchedulingPolicy::Priority => Self::Priority(BTreeSet::new()),
        }
    }

    /// A new arrival.
    pub fn push(&mut self, r: &Request) {
        match self {
            Self::Fcfs(q) => q.push_back(r.id),
            Self::Priority(q) => {
                q.insert(priority_key(r));
            }
        }
    }

    /// A preempted request going back to wait.
    pub fn push_front(&mut self, r: &Request) {
        match self {
            Self::Fcfs(q) => q.push_front(r.id),
            Self::Priority(q) => {
                q.insert(priority_key(r));
            }
        }
    }

    /// The next request to admit.
    pub fn peek(&self) -> Option<RequestId> {
        match self {
            Self::Fcfs(q) => q.front().copied(),
            Self::Priority(q) => q.first().map(|k| k.2),
        }
    }

    pub fn pop(&mut self) -> Option<RequestId> {
        match self {
            Self::Fcfs(q) => q.pop_front(),
            Self::Priority(q) => q.pop_first().map(|k| k.2),
        }
    }

    /// Removes `r` wherever it waits (abort). Returns whether it was queued.
    pub fn remove(&mut self, r: &Request) -> bool {
        match self {
            Self::Fcfs(q) => match q.iter().position(|&id| id == r.id) {
                Some(i) => q.remove(i).is_some(),
                None => false,
            },
            Self::Priority(q) => q.remove(&priority_key(r)),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Self::Fcfs(q) => q.len(),
            Self::Priority(q) => q.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waiting ids in admission order.
    pub fn ids(&self) -> Vec<RequestId> {
        match self {
            Self::Fcfs(q) => q.iter().copied().collect(),
            Self::Priority(q) => q.iter().map(|k| k.2).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling_params::SamplingParams;
    use std::sync::Arc;

    fn req(id: RequestId, priority: i32, arrival: u64) -> Request {
        let mut r = Request::new(
            id,
            vec![1],
            Arc::new(SamplingParams::default()),
            1,
            Arc::new(vec![]),
            arrival,
        );
        r.priority = priority;
        r
    }

    #[test]
    fn fcfs_keeps_arrival_order_and_preempted_go_first() {
        let mut q = RequestQueue::new(SchedulingPolicy::Fcfs);
        let (a, b, c) = (req(1, 9, 0), req(2, 0, 1), req(3, 5, 2));
        q.push(&a);
        q.push(&b);
        q.push_front(&c);
        assert_eq!(q.ids(), vec![3, 1, 2]);
        assert!(q.remove(&a));
        assert!(!q.remove(&a));
        assert_eq!((q.pop(), q.pop(), q.pop()), (Some(3), Some(2), None));
    }

    #[test]
    fn priority_orders_by_priority_then_arrival() {
        let mut q = RequestQueue::new(SchedulingPolicy::Priority);
        for r in [req(1, 5, 0), req(2, 0, 3), req(3, 0, 1), req(4, -1, 9)] {
            q.push(&r);
        }
        q.push_front(&req(5, 0, 2)); // preempted: back by its key, not ahead of more urgent work
        assert_eq!(q.ids(), vec![4, 3, 5, 2, 1]);
        assert!(q.remove(&req(2, 0, 3)));
        assert_eq!(q.peek(), Some(4));
        assert_eq!(q.len(), 4);
    }
}
