//! The inspection part of `meterctl status`: one line saying where the meter
//! stands (`ok`, `due`, `overdue`) with the due and lock dates, a warning
//! while the inspection is due, and the `inspection` object of the JSON
//! output. Read from the `inspection_*` keys of `Status()`; a daemon older
//! than the warning period (no `inspection_state`) gets none of them.

use meter_proto::inspection_state as st;
use meter_proto::keys::status as key;
use serde_json::{json, Value as Json};

use crate::output::{format_unix_time, Dict};

/// The meter's inspection standing, from a `Status()` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// `ok`, `due` or `overdue`.
    pub state: String,
    /// When the inspection falls due (the warning starts), Unix s.
    pub due: i64,
    /// When the meter locks `inspection-overdue`, Unix s.
    pub locks: i64,
    /// Days from the last acknowledged report (or certification) to `due`.
    pub warn_days: u64,
    /// Days from it to `locks`.
    pub period_days: u64,
}

impl Inspection {
    /// Reads the reply; `None` when the meter says nothing of it
    /// (unprovisioned, or a daemon without the warning period).
    pub fn of(d: &Dict<'_>) -> Option<Inspection> {
        let state = d.str(key::INSPECTION_STATE).filter(|s| !s.is_empty())?;
        Some(Inspection {
            state,
            due: d.i64(key::INSPECTION_WARN_AT).unwrap_or(0),
            locks: d.i64(key::INSPECTION_DUE).unwrap_or(0),
            warn_days: d.u64(key::INSPECTION_WARN_DAYS).unwrap_or(0),
            period_days: d.u64(key::INSPECTION_PERIOD_DAYS).unwrap_or(0),
        })
    }

    /// The `inspection:` line of the human output.
    pub fn line(&self) -> String {
        let (due, locks) = (format_unix_time(self.due), format_unix_time(self.locks));
        let what = match self.state.as_str() {
            st::OK => format!("due {due}, locks {locks}"),
            st::DUE => format!("report by {due}, locks {locks}"),
            st::OVERDUE => format!("was due {due}, locked at {locks}"),
            _ => format!("due {due}, locks {locks}"),
        };
        format!("inspection: {} — {what}\n", self.state)
    }

    /// The warning for people while the inspection is due.
    pub fn warning(&self) -> Option<String> {
        (self.state == st::DUE).then(|| {
            format!(
                "inspection due: the meter locks at {} unless a status report is acknowledged first (meterctl report, then meterctl report ack)",
                format_unix_time(self.locks)
            )
        })
    }

    /// The `inspection` member of the JSON output.
    pub fn json(&self) -> Json {
        json!({
            "state": self.state,
            "due": self.due,
            "due_time": format_unix_time(self.due),
            "locks": self.locks,
            "lock_time": format_unix_time(self.locks),
            "warn_days": self.warn_days,
            "period_days": self.period_days,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use zbus::zvariant::{OwnedValue, Value};

    fn reply(state: &str) -> HashMap<String, OwnedValue> {
        let mut m = HashMap::new();
        let s = OwnedValue::try_from(Value::from(state)).unwrap();
        m.insert(key::INSPECTION_STATE.into(), s);
        m.insert(
            key::INSPECTION_WARN_AT.into(),
            OwnedValue::from(1_803_859_200i64),
        );
        m.insert(
            key::INSPECTION_DUE.into(),
            OwnedValue::from(1_806_451_200i64),
        );
        m.insert(key::INSPECTION_WARN_DAYS.into(), OwnedValue::from(90u32));
        m.insert(key::INSPECTION_PERIOD_DAYS.into(), OwnedValue::from(120u32));
        m
    }

    #[test]
    fn due_line_json_and_warning() {
        let m = reply("due");
        let i = Inspection::of(&Dict(&m)).unwrap();
        assert_eq!(
            i.line(),
            "inspection: due — report by 2027-03-01T00:00:00Z, locks 2027-03-31T00:00:00Z\n"
        );
        assert!(i.warning().unwrap().contains("2027-03-31T00:00:00Z"));
        let j = i.json();
        assert_eq!(j["state"], "due");
        assert_eq!(j["due"], 1_803_859_200i64);
        assert_eq!(j["locks"], 1_806_451_200i64);
        assert_eq!(j["due_time"], "2027-03-01T00:00:00Z");
        assert_eq!(j["lock_time"], "2027-03-31T00:00:00Z");
        assert_eq!(
            (j["warn_days"].as_u64(), j["period_days"].as_u64()),
            (Some(90), Some(120))
        );
    }

    #[test]
    fn ok_and_overdue_lines_have_no_warning() {
        let m = reply("ok");
        let i = Inspection::of(&Dict(&m)).unwrap();
        assert!(i
            .line()
            .starts_with("inspection: ok — due 2027-03-01T00:00:00Z"));
        assert_eq!(i.warning(), None);
        let m = reply("overdue");
        let i = Inspection::of(&Dict(&m)).unwrap();
        assert!(i.line().starts_with("inspection: overdue — "));
        assert_eq!(i.warning(), None);
    }

    #[test]
    fn absent_or_empty_state_says_nothing() {
        assert_eq!(Inspection::of(&Dict(&HashMap::new())), None);
        let m = reply("");
        assert_eq!(Inspection::of(&Dict(&m)), None);
    }
}
