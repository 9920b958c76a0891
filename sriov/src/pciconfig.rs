//! PCI configuration space parsing (capabilities: SR-IOV, ACS, PCIe).
