//! Ids of threads and messages: UUID version 1 that cannot be guessed from the outside.

use rand::Rng;
use uuid::Uuid;

/// 100-nanosecond intervals between the Gregorian epoch (1582-10-15) and the Unix epoch.
const GREGORIAN_OFFSET: u64 = 0x01B2_1DD2_1381_4000;

/// A new UUID version 1 for the current time, with a random clock sequence and a random node
/// id whose multicast bit is set (RFC 9562 §6.10), so it never carries a MAC address.
pub fn new_id() -> Uuid {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let ticks = (now.as_nanos() / 100) as u64 + GREGORIAN_OFFSET;
    let mut rng = rand::thread_rng();
    let clock_seq: u16 = rng.gen::<u16>() & 0x3fff | 0x8000;
    let mut node: [u8; 6] = rng.gen();
    node[0] |= 0x01;
    let mut tail = [0u8; 8];
    tail[..2].copy_from_slice(&clock_seq.to_be_bytes());
    tail[2..].copy_from_slice(&node);
    Uuid::from_fields(
        (ticks & 0xffff_ffff) as u32,
        ((ticks >> 32) & 0xffff) as u16,
        ((ticks >> 48) & 0x0fff) as u16 | 0x1000,
        &tail,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_version_1_with_a_random_multicast_node() {
        let id = new_id();
        assert_eq!(id.get_version_num(), 1);
        assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
        let node = &id.as_bytes()[10..];
        assert_eq!(node[0] & 0x01, 0x01, "multicast bit must be set");
    }

    #[test]
    fn ids_do_not_repeat_node_or_clock_sequence() {
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
        assert_ne!(a.as_bytes()[8..], b.as_bytes()[8..]);
    }

    #[test]
    fn ids_carry_the_current_time() {
        let id = new_id();
        let (secs, _) = id.get_timestamp().expect("v1 has a timestamp").to_unix();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(now.abs_diff(secs) < 5);
    }
}
