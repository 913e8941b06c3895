//! Wire types and pure decision tables of the Panorama gateway protocol.
pub mod cancel;
pub mod capabilities;
pub mod full_control;
pub mod guard;
pub mod jobs;
pub mod operational;
pub mod remote_shell;
pub mod results;
pub mod rows;
pub mod shell_gate;
pub mod status;
pub mod time;
