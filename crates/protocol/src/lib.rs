//! Wire types and pure decision tables of the Panorama gateway protocol.
pub mod capabilities;
pub mod operational;
pub mod status;
pub mod time;
