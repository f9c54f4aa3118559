//! The tokio side (feature `tokio`): [`AsyncChannel`], [`AsyncServerHandle`],
//! [`AsyncConnection`] and [`AsyncPool`], and what `#[fdserver]`'s async clients call.

mod channel;
mod handle;
mod incoming;
mod pool;

pub use channel::AsyncChannel;
pub use handle::{AsyncConnection, AsyncServerHandle};
pub use pool::{AsyncClient, AsyncPool, AsyncPooled};
