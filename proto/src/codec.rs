//! The codec of every generated client and server: prost encoding with
//! small initial buffers.
//!
//! tonic's default codec starts each call's encode and decode buffers at
//! 8 KiB and keeps the encode buffer for the life of a stream. A policy
//! instance holds 100,000 `WatchUpdateHints` streams whose messages are a
//! few hundred bytes, so that buffer alone would be 800 MB. Buffers still
//! grow on demand for large messages (a `GetGraph` answer).

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial buffer size of each call (bytes).
pub const INITIAL_BUFFER: usize = 512;

/// Messages larger than this are flushed without waiting for more (tonic's default).
pub const YIELD_THRESHOLD: usize = 32 * 1024;

/// [`ProstCodec`] with [`INITIAL_BUFFER`]-sized buffers.
#[derive(Debug, Clone, Copy)]
pub struct CompactCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for CompactCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(INITIAL_BUFFER, YIELD_THRESHOLD)
}

impl<T, U> Codec for CompactCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}

#[cfg(test)]
mod tests {
    use tonic::codec::{Decoder, Encoder};

    use super::*;

    #[test]
    fn buffers_start_small() {
        let mut codec = CompactCodec::<prost_types::Duration, prost_types::Duration>::default();
        let encoder = format!("{:?}", codec.encoder().buffer_settings());
        let decoder = format!("{:?}", codec.decoder().buffer_settings());
        for settings in [encoder, decoder] {
            assert!(settings.contains("buffer_size: 512"), "{settings}");
        }
    }
}
