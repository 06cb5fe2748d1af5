//! Session slots: how many sessions run at once, in total and per member.
//!
//! A server runs at most `total` sessions at once, and one member at most `per_member` of them
//! (by default half the slots), so that one member cannot lock the others out by holding every
//! slot. The order of the checks is what keeps members from learning about each other: a
//! member is first checked against its *own* quota, which depends only on its own sessions and
//! is the only refusal that gives a count ("you are running your maximum of 2 sessions"). Only
//! a member under its quota can meet a full server, and then it is told that the server is
//! busy, nothing more: not how many sessions run, nor whose. When the quotas of the members
//! who may query add up to no more than `total`, a member under its quota always finds a free
//! slot, and "busy" never happens at all.
//!
//! A [`SessionSlot`] frees its slot when it is dropped, however the session ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Why a session may not take a slot now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlotRefusal {
    /// The member already runs as many sessions as it may: a fact about its own sessions only.
    #[error(
        "member {member:?} is running its maximum of {limit} concurrent sessions on this \
         server; wait for one to end"
    )]
    MemberQuota {
        /// The member.
        member: String,
        /// Its quota.
        limit: u32,
    },
    /// Every slot is taken (by sessions this member is not told about).
    #[error("the server is busy; try again later")]
    Busy,
}

/// Sessions running now, in total and per member.
#[derive(Debug, Default)]
struct Occupancy {
    running: u32,
    by_member: HashMap<String, u32>,
}

/// The session slots of one server.
#[derive(Debug, Clone)]
pub struct SessionSlots {
    occupancy: Arc<Mutex<Occupancy>>,
    total: u32,
    per_member: u32,
}

impl SessionSlots {
    /// `total` slots, at most `per_member` of them for one member.
    pub fn new(total: u32, per_member: u32) -> SessionSlots {
        SessionSlots {
            occupancy: Arc::default(),
            total,
            per_member: per_member.min(total),
        }
    }

    fn occupancy(&self) -> MutexGuard<'_, Occupancy> {
        // Every change is a counter update that cannot be left half-done.
        self.occupancy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a slot for `member`: refused when it is at its own quota (checked first), else
    /// when the server is full.
    pub fn acquire(&self, member: &str) -> Result<SessionSlot, SlotRefusal> {
        let mut occupancy = self.occupancy();
        let own = occupancy.by_member.get(member).copied().unwrap_or(0);
        if own >= self.per_member {
            return Err(SlotRefusal::MemberQuota {
                member: member.to_owned(),
                limit: self.per_member,
            });
        }
        if occupancy.running >= self.total {
            return Err(SlotRefusal::Busy);
        }
        occupancy.running += 1;
        *occupancy.by_member.entry(member.to_owned()).or_default() += 1;
        Ok(SessionSlot {
            slots: self.clone(),
            member: member.to_owned(),
        })
    }

    /// Sessions running now.
    pub fn running(&self) -> u32 {
        self.occupancy().running
    }
}

/// One taken slot; dropping it frees the slot.
#[derive(Debug)]
pub struct SessionSlot {
    slots: SessionSlots,
    member: String,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut occupancy = self.slots.occupancy();
        occupancy.running = occupancy.running.saturating_sub(1);
        if let Some(own) = occupancy.by_member.get_mut(&self.member) {
            *own = own.saturating_sub(1);
            if *own == 0 {
                occupancy.by_member.remove(&self.member);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_is_held_to_its_quota_and_told_only_about_its_own_sessions() {
        let slots = SessionSlots::new(4, 2);
        let b1 = slots.acquire("b").unwrap();
        let _b2 = slots.acquire("b").unwrap();
        // B at its quota: told so, with its own figure.
        assert_eq!(
            slots.acquire("b").unwrap_err(),
            SlotRefusal::MemberQuota {
                member: "b".into(),
                limit: 2
            }
        );
        // A still has both of its slots, whatever B does.
        let a1 = slots.acquire("a").unwrap();
        let _a2 = slots.acquire("a").unwrap();
        // A at its quota learns nothing of B: the same refusal as when B runs nothing.
        let alone = SessionSlots::new(4, 2);
        let (_x, _y) = (alone.acquire("a").unwrap(), alone.acquire("a").unwrap());
        assert_eq!(
            slots.acquire("a").unwrap_err().to_string(),
            alone.acquire("a").unwrap_err().to_string()
        );
        assert_eq!(slots.running(), 4);
        drop(b1);
        drop(a1);
        assert_eq!(slots.running(), 2);
        assert!(slots.acquire("b").is_ok());
    }

    #[test]
    fn a_full_server_says_only_that_it_is_busy() {
        let slots = SessionSlots::new(3, 2);
        let _a = slots.acquire("a").unwrap();
        let _b = slots.acquire("b").unwrap();
        let _c = slots.acquire("c").unwrap();
        let refusal = slots.acquire("d").unwrap_err();
        assert_eq!(refusal, SlotRefusal::Busy);
        assert!(!refusal.to_string().contains(char::is_numeric));
        // A member at its own quota is told that first, full server or not.
        let single = SessionSlots::new(3, 1);
        let _s = single.acquire("a").unwrap();
        assert!(matches!(
            single.acquire("a"),
            Err(SlotRefusal::MemberQuota { limit: 1, .. })
        ));
    }

    #[test]
    fn the_quota_never_exceeds_the_total() {
        let slots = SessionSlots::new(1, 5);
        let _a = slots.acquire("a").unwrap();
        assert!(matches!(
            slots.acquire("a"),
            Err(SlotRefusal::MemberQuota { limit: 1, .. })
        ));
    }
}
