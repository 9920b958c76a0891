//! rtnetlink access to per-VF settings (read and write, with read-back).
