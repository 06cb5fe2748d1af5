//! The collaboration files under `examples/` that README.md shows must load as they are.

use cleanroom_rules::{Ability, Collaboration};

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");

#[test]
fn the_three_member_example_loads() {
    let collaboration = Collaboration::load(format!("{EXAMPLES}/three-members.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(collaboration.id(), "newsco-acme-spring");
    let names: Vec<&str> = collaboration.members().iter().map(|m| m.name()).collect();
    assert_eq!(names, ["publisher", "advertiser", "agency"]);
    let agency = collaboration.member("agency").unwrap();
    assert!(agency.can(Ability::ReceiveResults) && !agency.can(Ability::Query));
    assert!(agency.token_matches("agency-token"));
    assert_eq!(collaboration.tables_of("agency").count(), 0);
    let owners: Vec<(&str, &str)> = collaboration
        .tables()
        .iter()
        .map(|t| (t.name(), t.owner()))
        .collect();
    assert_eq!(
        owners,
        [("impressions", "publisher"), ("purchases", "advertiser")]
    );
}
