use super::*;

fn addr(port: u16, peer: PeerId) -> Multiaddr {
    format!("/ip4/127.0.0.1/tcp/{port}/p2p/{peer}")
        .parse()
        .expect("addr")
}

fn good(peer: PeerId, port: u16, score: f64) -> KnownPeer {
    KnownPeer {
        peer_id: peer,
        addrs: vec![addr(port, peer)],
        score,
        connected: true,
        ban_left: None,
    }
}

fn banned(peer: PeerId, left: Duration) -> KnownPeer {
    KnownPeer {
        peer_id: peer,
        addrs: Vec::new(),
        score: -100.0,
        connected: false,
        ban_left: Some(left),
    }
}

#[test]
fn only_peers_that_worked_well_are_remembered_and_bans_replace_them() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut file = PeerFile::empty(&dir.path().join(FILE_NAME));
    let (a, b, c, d) = (
        PeerId::random(),
        PeerId::random(),
        PeerId::random(),
        PeerId::random(),
    );
    // c is connected with a good score but sent no Status on our chain.
    let other_chain = good(c, 3, 0.0);
    file.update(
        &[
            good(a, 1, 0.0),
            good(b, 2, -1.0),
            other_chain,
            banned(d, Duration::from_secs(60)),
        ],
        &|p: &PeerId| *p != c,
        1_000,
    );
    assert_eq!(file.dial_addrs(), vec![addr(1, a)]);
    assert_eq!(file.bans_left(1_000), vec![(d, Duration::from_secs(60))]);
    // A remembered peer later banned is forgotten as a peer and kept as a ban.
    file.update(&[banned(a, Duration::from_secs(5))], &|_: &PeerId| true, 2_000);
    assert!(file.dial_addrs().is_empty());
    assert_eq!(
        file.bans_left(6_999),
        vec![(a, Duration::from_millis(1)), (d, Duration::from_millis(54_001))]
    );
    // Bans that ended are dropped.
    file.update(&[], &|_: &PeerId| true, 7_000);
    assert_eq!(file.bans_left(7_000), vec![(d, Duration::from_millis(54_000))]);
    file.update(&[], &|_: &PeerId| true, 61_000);
    assert!(file.bans.is_empty());
}

#[test]
fn bounded_with_the_longest_unseen_then_worst_evicted() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut file = PeerFile::empty(&dir.path().join(FILE_NAME));
    let oldest = PeerId::random();
    file.update(&[good(oldest, 1, 5.0)], &|_: &PeerId| true, 1);
    let worst = PeerId::random();
    let best = PeerId::random();
    let mut batch: Vec<KnownPeer> = (0..MAX_PEERS - 2)
        .map(|i| good(PeerId::random(), 10 + i as u16, 1.0))
        .collect();
    batch.push(good(worst, 2, -0.0));
    batch.push(good(best, 3, 2.0));
    file.update(&batch, &|_: &PeerId| true, 2);
    assert_eq!(file.peer_count(), MAX_PEERS);
    assert!(!file.peers.contains_key(&oldest), "the longest unseen goes first");
    assert!(file.peers.contains_key(&worst));
    file.update(&[good(PeerId::random(), 4, 1.0)], &|_: &PeerId| true, 3);
    assert_eq!(file.peer_count(), MAX_PEERS);
    assert!(!file.peers.contains_key(&worst), "then the lowest scored");
    assert!(file.peers.contains_key(&best));

    let bans: Vec<KnownPeer> = (0..MAX_BANS + 5)
        .map(|i| banned(PeerId::random(), Duration::from_millis(1_000 + i as u64)))
        .collect();
    file.update(&bans, &|_: &PeerId| true, 0);
    let left = file.bans_left(0);
    assert_eq!(left.len(), MAX_BANS);
    assert!(
        left.iter().all(|(_, d)| *d >= Duration::from_millis(1_005)),
        "the soonest ending bans go first"
    );
}

#[test]
fn saved_and_loaded_back() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join(FILE_NAME);
    let mut file = PeerFile::empty(&path);
    let (a, b, d) = (PeerId::random(), PeerId::random(), PeerId::random());
    file.update(&[good(a, 1, 0.5)], &|_: &PeerId| true, 1_000);
    file.update(
        &[good(b, 2, 0.0), banned(d, Duration::from_secs(600))],
        &|_: &PeerId| true,
        2_000,
    );
    file.save().expect("save");
    let back = PeerFile::load(&path);
    assert_eq!(
        back.dial_addrs(),
        vec![addr(2, b), addr(1, a)],
        "the most recently good first"
    );
    assert_eq!(back.bans_left(3_000), vec![(d, Duration::from_millis(599_000))]);
    assert_eq!(back.peers, file.peers);
}

#[test]
fn a_corrupt_file_is_set_aside_not_fatal_and_not_lost() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join(FILE_NAME);
    std::fs::write(&path, b"{\"version\": 1, \"peers\": [trunc").expect("write");
    let file = PeerFile::load(&path);
    assert_eq!(file.peer_count(), 0);
    assert!(file.bans_left(0).is_empty());
    let aside = dir.path().join("peers.json.corrupt");
    assert_eq!(
        std::fs::read(&aside).expect("kept aside"),
        b"{\"version\": 1, \"peers\": [trunc"
    );
    assert!(!path.exists());
    file.save().expect("a new file is written");
    assert_eq!(PeerFile::load(&path).peer_count(), 0);
    assert!(
        aside.exists(),
        "the new file does not overwrite the one set aside"
    );

    // An unknown version is set aside the same way.
    std::fs::write(&path, br#"{"version": 99, "peers": [], "bans": []}"#).expect("write");
    assert_eq!(PeerFile::load(&path).peer_count(), 0);
    assert!(!path.exists());
}

#[test]
fn entries_that_do_not_parse_are_skipped_one_by_one() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join(FILE_NAME);
    let a = PeerId::random();
    let d = PeerId::random();
    let text = serde_json::json!({
        "version": 1,
        "peers": [
            {"peer_id": a.to_string(), "addrs": [addr(1, a).to_string(), "not an address"], "score": 0.0, "last_good_ms": 5},
            {"peer_id": "not a peer", "addrs": ["/ip4/127.0.0.1/tcp/2"], "score": 0.0, "last_good_ms": 5},
            {"peer_id": PeerId::random().to_string(), "addrs": [], "score": 0.0, "last_good_ms": 5}
        ],
        "bans": [{"peer_id": d.to_string(), "until_ms": 10}, {"peer_id": "x", "until_ms": 10}]
    });
    std::fs::write(&path, text.to_string()).expect("write");
    let file = PeerFile::load(&path);
    assert_eq!(file.dial_addrs(), vec![addr(1, a)]);
    assert_eq!(file.bans_left(0), vec![(d, Duration::from_millis(10))]);
    assert!(
        path.exists(),
        "a file with some bad entries is used, not set aside"
    );
}

#[test]
fn the_write_is_atomic() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join(FILE_NAME);
    let a = PeerId::random();
    let mut file = PeerFile::empty(&path);
    file.update(&[good(a, 1, 0.0)], &|_: &PeerId| true, 1);
    file.save().expect("save");
    let before = std::fs::read(&path).expect("read");
    // A write killed before its rename leaves a partial temporary file: the file itself is whole.
    let tmp = dir.path().join("peers.json.tmp");
    std::fs::write(&tmp, &before[..before.len() / 2]).expect("partial");
    assert_eq!(PeerFile::load(&path).dial_addrs(), vec![addr(1, a)]);
    // The next write replaces the file whole and leaves no temporary file behind.
    let b = PeerId::random();
    file.update(&[good(b, 2, 0.0)], &|_: &PeerId| true, 2);
    file.save().expect("save");
    assert!(!tmp.exists());
    assert_eq!(PeerFile::load(&path).dial_addrs(), vec![addr(2, b), addr(1, a)]);
    // A write that cannot happen fails and leaves the file as it was.
    let gone = PeerFile::empty(&dir.path().join("missing-dir").join(FILE_NAME));
    assert!(gone.save().is_err());
    assert_eq!(PeerFile::load(&path).peer_count(), 2);
}
