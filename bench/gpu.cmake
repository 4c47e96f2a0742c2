# kvtier-gpu-bench: GPU <-> host ceilings and kvtier's copy/quantization paths (needs CUDA).
# Run it through bench/gpu_bench.sh, which writes bench/results/gpu_<device>.json.
if(KVT_HAVE_CUDA AND TARGET kvt_gpu)
	add_executable(kvtier-gpu-bench ${CMAKE_CURRENT_SOURCE_DIR}/gpu_bench.cu)
	# nvcc takes none of the top level's gcc warning flags
	set_property(TARGET kvtier-gpu-bench PROPERTY COMPILE_OPTIONS "")
	set_target_properties(kvtier-gpu-bench PROPERTIES CUDA_ARCHITECTURES 90 CUDA_STANDARD 17
		CUDA_STANDARD_REQUIRED ON)
	target_compile_options(kvtier-gpu-bench PRIVATE
		-Xcompiler=-Wall,-Wextra,-Wno-unused-parameter,-Wno-missing-field-initializers)
	target_link_libraries(kvtier-gpu-bench PRIVATE kvt_gpu CUDA::cudart)
endif()
