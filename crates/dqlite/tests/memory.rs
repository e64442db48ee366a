//! `release_free_memory` gives freed heap memory back: alone in its test binary, so that no
//! other test allocates while it reads the process's resident size.

/// The process's resident memory in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS line");
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmRSS value")
}

#[test]
fn freed_memory_between_live_allocations_goes_back_to_the_kernel() {
    const BLOCK: usize = 32 * 1024;
    const BLOCKS: usize = 2048;
    // 64 MiB in blocks under glibc's mmap threshold, every page written, as libraft's log
    // entries are; then all freed but every 64th block, which keeps the freed runs in the
    // middle of the heap, where glibc does not trim them by itself.
    let mut blocks: Vec<Option<Box<[u8]>>> =
        (0..BLOCKS).map(|i| Some(vec![(i % 251) as u8 + 1; BLOCK].into_boxed_slice())).collect();
    for (i, block) in blocks.iter_mut().enumerate() {
        if i % 64 != 63 {
            *block = None;
        }
    }
    let before = rss_kib();
    assert!(dqlite::release_free_memory(), "glibc gave nothing back with 62 MiB freed");
    let after = rss_kib();
    assert!(
        before.saturating_sub(after) >= 48 * 1024,
        "resident memory went from {before} KiB to {after} KiB: expected at least 48 MiB less"
    );
    // The blocks still held are intact.
    for (i, block) in blocks.iter().enumerate().filter_map(|(i, b)| b.as_ref().map(|b| (i, b))) {
        assert!(block.iter().all(|&byte| byte == (i % 251) as u8 + 1), "block {i} changed");
    }
}
