//! Hostile clients and hostile inputs against real `skynet` processes on loopback: one module
//! per area. Every child process is killed when its guard drops, every wait is bounded, and
//! temporary files go away with the test.

mod files;
