//! D-Bus sources: a method call whose reply carries the exposition as a
//! string (`s`) or a byte array (`ay`). One connection per scrape, so a bus
//! restart never leaves the bridge holding a dead connection.

use bytes::Bytes;
use tokio::time::timeout;
use zbus::Connection;
use zbus::connection::Builder;

use super::{Bus, DbusTarget};
use crate::config::Limits;
use crate::error::SourceError;

/// Calls the method and returns its reply's bytes.
pub(super) async fn call(target: &DbusTarget, limits: &Limits) -> Result<Bytes, SourceError> {
    let connection = timeout(limits.connect_timeout, connect(&target.bus))
        .await
        .map_err(|_| SourceError::ConnectTimeout(limits.connect_timeout))??;
    let method = format!(
        "{} {} {}.{}",
        target.destination, target.path, target.interface, target.method
    );
    let call_failed = |source| SourceError::DbusCall {
        method: method.clone(),
        source: Box::new(source),
    };
    let reply = timeout(
        limits.read_timeout,
        connection.call_method(
            Some(target.destination.as_str()),
            target.path.as_str(),
            Some(target.interface.as_str()),
            target.method.as_str(),
            &(),
        ),
    )
    .await
    .map_err(|_| SourceError::ReadTimeout(limits.read_timeout))?
    .map_err(call_failed)?;
    let body = reply.body();
    let signature = body.signature().to_string();
    let bytes = match signature.as_str() {
        "s" => Bytes::from(body.deserialize::<String>().map_err(call_failed)?),
        "ay" => Bytes::from(body.deserialize::<Vec<u8>>().map_err(call_failed)?),
        _ => return Err(SourceError::DbusSignature { method, signature }),
    };
    if bytes.len() as u64 > limits.max_bytes {
        return Err(SourceError::TooLarge {
            limit: limits.max_bytes,
        });
    }
    Ok(bytes)
}

async fn connect(bus: &Bus) -> Result<Connection, SourceError> {
    let failed = |source| SourceError::DbusConnect {
        bus: describe(bus),
        source: Box::new(source),
    };
    let builder = match bus {
        Bus::System => Builder::system(),
        Bus::Session => Builder::session(),
        Bus::Address(address) => Builder::address(address.as_str()),
    }
    .map_err(failed)?;
    builder.build().await.map_err(failed)
}

fn describe(bus: &Bus) -> String {
    match bus {
        Bus::System => "system bus".to_string(),
        Bus::Session => "session bus".to_string(),
        Bus::Address(address) => format!("bus at {address}"),
    }
}
