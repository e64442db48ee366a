//! `pin_allocator_thresholds` keeps large blocks out of the arenas after a larger one was
//! freed: alone in its test binary, since it changes the process's allocator and reads its
//! resident size.

/// The process's resident memory in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS line");
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmRSS value")
}

/// A block of `bytes` with every page written, as libdqlite's snapshot buffers are.
fn touched(bytes: usize) -> Vec<u8> {
    std::hint::black_box(vec![1u8; bytes])
}

#[test]
fn memory_freed_by_a_thread_goes_back_after_a_larger_block_was_freed() {
    assert!(dqlite::pin_allocator_thresholds(), "glibc refused the thresholds");
    // Unpinned, freeing this raises glibc's mmap threshold to 8 MiB and its trim threshold to
    // 16 MiB: the blocks below would then come from the thread's arena and stay resident.
    drop(touched(8 << 20));
    let grew = std::thread::spawn(|| {
        // The thread's first allocation gives it an arena of its own.
        drop(touched(64));
        let before = rss_kib();
        let blocks: Vec<Vec<u8>> = (0..4).map(|_| touched(3 << 20)).collect();
        let held = rss_kib();
        drop(blocks);
        (before, held, rss_kib())
    })
    .join()
    .expect("the allocating thread");
    let (before, held, after) = grew;
    assert!(held >= before + 10 * 1024, "12 MiB of blocks took only {} KiB", held.saturating_sub(before));
    assert!(
        after <= before + 1024,
        "resident memory {before} KiB, {held} KiB with the blocks, {after} KiB after freeing them: \
         they stayed in the arena"
    );
}
