//! The `cluster list`, `tokens list` and `servers list` views of the API's objects.

use std::collections::BTreeMap;

use microcluster::api::{ClusterMember, ServerAddress, TokenRecord};
use serde_json::json;

use crate::format::Listing;

/// Fingerprint characters shown in tables: enough to tell members apart at a glance.
const SHORT_FINGERPRINT: usize = 12;

/// Members: NAME, ADDRESS, ROLE, FINGERPRINT (short), STATUS in the table (with a note on a
/// member whose clock is off the cluster's); every field but the certificate in YAML/CSV.
pub(crate) fn members(members: &[ClusterMember]) -> Listing {
    let header = ["NAME", "ADDRESS", "ROLE", "FINGERPRINT", "STATUS"].map(String::from).to_vec();
    let cells = members
        .iter()
        .map(|m| {
            vec![
                m.local.name.clone(),
                m.local.address.clone(),
                m.role.clone(),
                m.fingerprint.chars().take(SHORT_FINGERPRINT).collect(),
                status_cell(m),
            ]
        })
        .collect();
    let keys = vec![
        "name",
        "address",
        "role",
        "fingerprint",
        "status",
        "status_reason",
        "last_heartbeat",
        "schema_internal_version",
        "schema_external_version",
        "extensions",
        "leader",
        "clock_offset",
        "clock_skewed",
    ];
    let records = members
        .iter()
        .map(|m| {
            vec![
                json!(m.local.name),
                json!(m.local.address),
                json!(m.role),
                json!(m.fingerprint),
                json!(m.status),
                json!(m.status_reason),
                json!(m.last_heartbeat),
                json!(m.schema_internal_version),
                json!(m.schema_external_version),
                json!(m.extensions),
                json!(m.leader),
                json!(m.clock_offset),
                json!(m.clock_skewed),
            ]
        })
        .collect();
    Listing { header, cells, keys, records, json: json!(members) }
}

/// The status, and how far the clock is off when the server reports it skewed (the details
/// and the fix are in `status_reason`).
fn status_cell(m: &ClusterMember) -> String {
    match m.clock_offset.filter(|_| m.clock_skewed) {
        Some(offset) => {
            let side = if offset > 0.0 { "ahead" } else { "behind" };
            let size = std::time::Duration::from_secs_f64(offset.abs().min(1e12));
            let size = if size.as_secs() < 60 {
                format!("{:.1}s", size.as_secs_f64())
            } else {
                humantime::format_duration(std::time::Duration::from_secs(size.as_secs_f64().round() as u64))
                    .to_string()
            };
            format!("{} (clock {size} {side})", m.status)
        }
        None => m.status.clone(),
    }
}

/// Join tokens: NAME, TOKEN, EXPIRES AT ("never" in the table when there is no expiry).
pub(crate) fn tokens(tokens: &[TokenRecord]) -> Listing {
    let header = ["NAME", "TOKEN", "EXPIRES AT"].map(String::from).to_vec();
    let cells = tokens
        .iter()
        .map(|t| {
            let expires = if t.expires_at.is_empty() { "never".to_owned() } else { t.expires_at.clone() };
            vec![t.name.clone(), t.token.clone(), expires]
        })
        .collect();
    let records = tokens.iter().map(|t| vec![json!(t.name), json!(t.token), json!(t.expires_at)]).collect();
    Listing { header, cells, keys: vec!["name", "token", "expires_at"], records, json: json!(tokens) }
}

/// Additional listeners: NAME, ADDRESS (empty: off). JSON is the API's map of name to address.
pub(crate) fn servers(servers: &BTreeMap<String, ServerAddress>) -> Listing {
    let header = ["NAME", "ADDRESS"].map(String::from).to_vec();
    let cells = servers.iter().map(|(name, s)| vec![name.clone(), s.address.clone()]).collect();
    let records = servers.iter().map(|(name, s)| vec![json!(name), json!(s.address)]).collect();
    Listing { header, cells, keys: vec!["name", "address"], records, json: json!(servers) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Format;
    use microcluster::api::ClusterMemberLocal;

    fn member() -> ClusterMember {
        ClusterMember {
            local: ClusterMemberLocal {
                name: "mc1".into(),
                address: "127.0.0.1:9001".into(),
                certificate: "-----BEGIN CERTIFICATE-----".into(),
            },
            role: "voter".into(),
            schema_internal_version: 7,
            schema_external_version: 2,
            last_heartbeat: "2025-03-20T17:52:03Z".into(),
            status: "ONLINE".into(),
            status_reason: String::new(),
            extensions: vec!["custom_extension_a_0".into()],
            fingerprint: "0123456789abcdef0123".into(),
            leader: true,
            clock_offset: Some(0.002),
            clock_skewed: false,
            certificate_days_left: Some(3650),
        }
    }

    #[test]
    fn members_table_shortens_the_fingerprint() {
        assert_eq!(
            members(&[member()]).render(Format::Table),
            "+------+----------------+-------+--------------+--------+\n\
             | NAME |    ADDRESS     | ROLE  | FINGERPRINT  | STATUS |\n\
             +------+----------------+-------+--------------+--------+\n\
             | mc1  | 127.0.0.1:9001 | voter | 0123456789ab | ONLINE |\n\
             +------+----------------+-------+--------------+--------+\n"
        );
    }

    #[test]
    fn members_records_have_every_field_in_full() {
        let listing = members(&[member()]);
        assert_eq!(
            listing.render(Format::Csv),
            "name,address,role,fingerprint,status,status_reason,last_heartbeat,schema_internal_version,\
             schema_external_version,extensions,leader,clock_offset,clock_skewed\n\
             mc1,127.0.0.1:9001,voter,0123456789abcdef0123,ONLINE,,2025-03-20T17:52:03Z,7,2,custom_extension_a_0,true,\
             0.002,false\n"
        );
        assert!(
            listing.render(Format::Yaml).contains("  fingerprint: \"0123456789abcdef0123\"\n  status: \"ONLINE\"\n")
        );
        let json: Vec<ClusterMember> = serde_json::from_str(&listing.render(Format::Json)).unwrap();
        assert_eq!(json, vec![member()]);
    }

    #[test]
    fn a_skewed_clock_is_flagged_in_the_table() {
        let mut skewed = member();
        (skewed.clock_offset, skewed.clock_skewed) = (Some(172_799.7), true);
        let mut behind = member();
        (behind.local.name, behind.clock_offset, behind.clock_skewed) = ("mc2".into(), Some(-7.25), true);
        let table = members(&[member(), skewed, behind]).render(Format::Table);
        let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("| mc")).collect();
        assert!(rows[0].ends_with("| ONLINE                     |"), "{table}");
        assert!(rows[1].ends_with("| ONLINE (clock 2days ahead) |"), "{table}");
        assert!(rows[2].ends_with("| ONLINE (clock 7.2s behind) |"), "{table}");
    }

    #[test]
    fn tokens_without_expiry_say_never() {
        let t = TokenRecord { name: "mc2".into(), token: "abc".into(), expires_at: String::new() };
        let listing = tokens(&[t]);
        assert!(listing.render(Format::Table).contains("| mc2  | abc   | never      |"));
        assert_eq!(listing.render(Format::Csv), "name,token,expires_at\nmc2,abc,\n");
    }

    #[test]
    fn servers_in_every_format() {
        let servers = BTreeMap::from([
            ("greeter".to_owned(), ServerAddress { address: "127.0.0.1:9101".into() }),
            ("off".to_owned(), ServerAddress { address: String::new() }),
        ]);
        let listing = super::servers(&servers);
        assert_eq!(
            listing.render(Format::Table),
            "+---------+----------------+\n\
             |  NAME   |    ADDRESS     |\n\
             +---------+----------------+\n\
             | greeter | 127.0.0.1:9101 |\n\
             | off     |                |\n\
             +---------+----------------+\n"
        );
        assert_eq!(listing.render(Format::Csv), "name,address\ngreeter,127.0.0.1:9101\noff,\n");
        assert_eq!(
            listing.render(Format::Yaml),
            "- name: \"greeter\"\n  address: \"127.0.0.1:9101\"\n- name: \"off\"\n  address: \"\"\n"
        );
        let json: BTreeMap<String, ServerAddress> = serde_json::from_str(&listing.render(Format::Json)).unwrap();
        assert_eq!(json, servers);
    }
}
