# llama.cpp for client/llama (included by the top-level CMakeLists.txt before the modules, so
# that tests/ and bench/ see KVT_HAVE_LLAMA).  scripts/common.sh installs the pinned build from
# the npm registry into .devdeps/npm/llama-VERSION; KVT_LLAMA_ROOT points elsewhere.
set(KVT_LLAMA "AUTO" CACHE STRING "Build the llama.cpp integration (client/llama): AUTO, ON or OFF")
set(KVT_LLAMA_ROOT "${PROJECT_SOURCE_DIR}/.devdeps/npm/llama-3.21.1" CACHE PATH
	"llama.cpp's lib/ and include/ (scripts/common.sh puts npm's node-llama-cpp 3.21.1 there)")
set(KVT_HAVE_LLAMA OFF)
if(NOT KVT_LLAMA STREQUAL "OFF")
	find_path(KVT_LLAMA_INCLUDE_DIR llama.h PATHS ${KVT_LLAMA_ROOT}/include NO_DEFAULT_PATH)
	find_library(KVT_LLAMA_LIBRARY NAMES llama.v0.4.0 PATHS ${KVT_LLAMA_ROOT}/lib NO_DEFAULT_PATH)
	find_library(KVT_GGML_LIBRARY NAMES ggml.v0.4.0 PATHS ${KVT_LLAMA_ROOT}/lib NO_DEFAULT_PATH)
	find_library(KVT_GGML_BASE_LIBRARY NAMES ggml-base PATHS ${KVT_LLAMA_ROOT}/lib NO_DEFAULT_PATH)
	if(KVT_LLAMA_INCLUDE_DIR AND KVT_LLAMA_LIBRARY AND KVT_GGML_LIBRARY AND KVT_GGML_BASE_LIBRARY)
		set(KVT_HAVE_LLAMA ON)
		add_library(kvt_llama_cpp INTERFACE IMPORTED)
		target_include_directories(kvt_llama_cpp SYSTEM INTERFACE ${KVT_LLAMA_INCLUDE_DIR})
		target_link_libraries(kvt_llama_cpp INTERFACE ${KVT_LLAMA_LIBRARY} ${KVT_GGML_LIBRARY}
			${KVT_GGML_BASE_LIBRARY})
	elseif(KVT_LLAMA STREQUAL "ON")
		message(FATAL_ERROR "KVT_LLAMA=ON but llama.cpp is not in ${KVT_LLAMA_ROOT} "
			"(scripts/common.sh installs it from npm)")
	endif()
endif()
if(KVT_HAVE_LLAMA)
	message(STATUS "kvtier: llama.cpp ON (${KVT_LLAMA_LIBRARY})")
else()
	message(STATUS "kvtier: llama.cpp OFF: not in ${KVT_LLAMA_ROOT} (KVT_LLAMA=${KVT_LLAMA}); "
		"client/llama is skipped and its tests exit 77 (scripts/common.sh installs it from npm)")
endif()
