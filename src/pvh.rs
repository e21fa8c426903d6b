//! `pvh`: the real-Xen platform for PVH guests. Under construction.
