# kvtier-llama-bench: TTFT with a prefix restored from kvtier's NVMe tier vs recomputing it
# vs llama.cpp's own state files (README "llama.cpp").  Built with the llama.cpp integration.
if(KVT_HAVE_LLAMA)
	add_executable(kvtier-llama-bench ${CMAKE_CURRENT_SOURCE_DIR}/llama_bench.c)
	target_link_libraries(kvtier-llama-bench PRIVATE kvtier_llama)
	target_compile_definitions(kvtier-llama-bench PRIVATE _GNU_SOURCE)
endif()
