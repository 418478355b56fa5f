//! Test access filter: a connection is admitted when its verified client
//! certificate's identity (`connection.client-identity`) is in `allow`;
//! any other is refused with 403 and the identity it saw.

use serde::Deserialize;
use weir_sdk::access::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityAccess {
    allow: Vec<String>,
}

impl AccessFilter for IdentityAccess {
    fn init(config: Config) -> Result<Self, Error> {
        Ok(config.parse()?)
    }

    fn check_connection(&mut self, conn: &Connection) -> Result<Verdict, Error> {
        Ok(match &conn.client_identity {
            Some(id) if self.allow.contains(id) => Verdict::AllowConnection,
            seen => Verdict::Deny(DenyInfo {
                reason: format!("client identity {seen:?} is not allowed"),
                status: Some(403),
                headers: vec![],
            }),
        })
    }
}

weir_sdk::export_access_filter!(IdentityAccess);
