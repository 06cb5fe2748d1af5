//! Protocol messages as a misbehaving peer would send them.

use cleanroom_psi::{AggregateMessage, WireMessage};

/// `message`'s items cut into chunks of at most `size` items, points and ciphertexts kept
/// together.
pub fn rechunk(message: AggregateMessage, size: usize) -> Vec<AggregateMessage> {
    let AggregateMessage::ReceiverItems {
        group,
        value_columns,
        points,
        ciphertexts,
    } = message
    else {
        panic!("expected items, got {}", message.kind())
    };
    let width = ciphertexts.len() / points.len();
    points
        .chunks(size)
        .zip(ciphertexts.chunks(size * width.max(1)))
        .map(|(points, ciphertexts)| AggregateMessage::ReceiverItems {
            group,
            value_columns,
            points: points.to_vec(),
            ciphertexts: if width == 0 {
                Vec::new()
            } else {
                ciphertexts.to_vec()
            },
        })
        .collect()
}
