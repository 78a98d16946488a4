use std::ffi::OsString;

use super::*;

fn settings() -> ServerSettings {
    ServerSettings::default()
}

#[test]
fn systemd_state_directory_is_the_default_data_dir() {
    let mut s = settings();
    apply_default_data_dir(
        &mut s,
        None,
        Some(OsString::from("/var/lib/upshift-graph:/x")),
    );
    assert_eq!(s.data_dir, PathBuf::from("/var/lib/upshift-graph"));

    let mut s = settings();
    apply_default_data_dir(&mut s, None, None);
    assert_eq!(
        s.data_dir,
        PathBuf::from("/var/lib/upshift"),
        "outside systemd"
    );
}

#[test]
fn a_data_dir_in_the_file_wins_over_state_directory() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("graph.toml");
    std::fs::write(&file, "[server]\ndata_dir = \"/srv/graph\"\n").unwrap();
    let mut s = settings();
    s.data_dir = PathBuf::from("/srv/graph");
    apply_default_data_dir(&mut s, Some(&file), Some(OsString::from("/var/lib/x")));
    assert_eq!(s.data_dir, PathBuf::from("/srv/graph"));
}

#[test]
fn an_unusable_data_dir_is_a_configuration_error_naming_it_and_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let bad = file.join("data");
    let errors = data_dir_ready(&bad, "server.data_dir").unwrap_err();
    let text = errors.to_string();
    assert!(text.starts_with("server.data_dir: "), "{text}");
    assert!(text.contains(&bad.display().to_string()), "{text}");
    assert!(text.contains("--data-dir DIR"), "{text}");

    let good = dir.path().join("new/data");
    data_dir_ready(&good, "server.data_dir").unwrap();
    assert!(good.is_dir());
    assert_eq!(
        std::fs::read_dir(&good).unwrap().count(),
        0,
        "no probe left"
    );
}

#[test]
fn the_embedded_store_needs_its_directory_etcd_none() {
    let mut store = upshift_store::settings::StoreSettings::default();
    let data = Path::new("/d");
    assert_eq!(
        store_dir(&store, data),
        Some((PathBuf::from("/d"), "server.data_dir"))
    );
    store.path = Some("/s/x/store.redb".into());
    assert_eq!(
        store_dir(&store, data),
        Some((PathBuf::from("/s/x"), "store.path"))
    );
    store.use_etcd(vec!["http://e:2379".into()]);
    assert_eq!(store_dir(&store, data), None);
}
