"""The suite's driver side: finding systems, launching workload processes, reporting."""
