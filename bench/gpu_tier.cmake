# kvtier-gpu-tier-bench: device put/get through a real kvtierd vs pinned cudaMemcpy in the same
# run.  Builds everywhere (it exits 77 without a GPU); results in bench/results/gpu_tier_*.json.
if(TARGET kvtier AND TARGET kvt_gpu)
	add_executable(kvtier-gpu-tier-bench ${CMAKE_CURRENT_SOURCE_DIR}/gpu_tier_bench.c)
	target_link_libraries(kvtier-gpu-tier-bench PRIVATE kvtier kvt_gpu kvt_kvd)
	target_compile_definitions(kvtier-gpu-tier-bench PRIVATE _GNU_SOURCE)
endif()
