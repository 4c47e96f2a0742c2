/* SPDX-License-Identifier: MIT */
/* Standalone entry for the NVMe bench; kvtier-bench --nvme calls the same function. */
int bench_nvme_main(int argc, char **argv);

int main(int argc, char **argv)
{
	return bench_nvme_main(argc, argv);
}
