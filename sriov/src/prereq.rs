//! Prerequisite checks for accelerated networking on a Linux node.
