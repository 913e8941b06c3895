//! Wire types and pure decision tables of the Panorama gateway protocol.
pub mod cancel;
pub mod capabilities;
pub mod full_control;
pub mod operational;
pub mod rows;
pub mod status;
pub mod time;
