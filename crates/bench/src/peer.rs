//! The reference Node gateway for the benchmark, installed by
//! [`panorama_testkit::reference`] (npm registry, with the Node runtime it
//! needs; nothing else is downloaded).

use crate::gateway::Flavor;
use anyhow::Result;

pub use panorama_testkit::reference::REFERENCE_PACKAGE as PEER_PACKAGE;

pub struct Peer {
    pub flavor: Flavor,
    pub node_version: String,
    _install: panorama_testkit::reference::ReferenceGateway,
}

pub fn install() -> Result<Peer> {
    eprintln!("[bench] installing the reference gateway {PEER_PACKAGE}");
    let install = panorama_testkit::reference::install()?;
    Ok(Peer {
        flavor: Flavor::Peer {
            node: install.node.clone(),
            script: install.script.clone(),
        },
        node_version: install.node_version.clone(),
        _install: install,
    })
}
