//! Agent-CA certification (Fig. 3A): the authority makes a business meter a CA for its
//! employees, limited to one level (pathLen 0) so the meter cannot create further CAs.
//!
//! The request is the meter's PKCS#10 for its agent key inside a CMS SignedData by the
//! meter's identity key (see `meter_pki::agent`): the authority learns both that the meter
//! holds the agent key and which certified meter asks.

use meter_pki::agent;
use meter_pki::cert;
use meter_pki::issue::Profile;

use crate::{Authority, Result};

impl Authority {
    /// Verifies an agent-CA request from a meter this authority certified and issues the
    /// agent-CA certificate (CN `<meter id> Agent CA`, CA, pathLen 0, keyCertSign).
    pub fn certify_agent_ca(&mut self, request: &[u8], now: i64) -> Result<cert::Certificate> {
        let anchors = [self.root().clone()];
        let req = agent::verify_agent_ca_request(request, &anchors, now)?;
        crate::check_meter_id(&req.meter_id)?;
        self.with_state(|a, state| {
            a.issue_one(
                state,
                &req.csr.subject_cn,
                &req.csr.public_sec1,
                Profile::AgentCa,
                now,
            )
        })
    }
}
