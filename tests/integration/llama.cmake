# kvtier inside llama.cpp (client/llama): the real libllama and a real kvtierd, on random
# GGUFs that client/llama/gguf_writer.py writes at test time.  Label engine.  Without
# llama.cpp (KVT_LLAMA=OFF or not installed) the test says so and exits 77 (skipped).
if(KVT_HAVE_LLAMA)
	# gguf_writer.py needs numpy: the first python3 that has it (Debian's python3-numpy).
	set(_kvt_llama_py "")
	find_program(_kvt_llama_py_path NAMES python3)
	foreach(cand /usr/bin/python3 ${_kvt_llama_py_path})
		if(NOT _kvt_llama_py AND EXISTS ${cand})
			execute_process(COMMAND ${cand} -c "import numpy"
				RESULT_VARIABLE _kvt_llama_py_rc OUTPUT_QUIET ERROR_QUIET)
			if(_kvt_llama_py_rc EQUAL 0)
				set(_kvt_llama_py ${cand})
			endif()
		endif()
	endforeach()
	if(NOT _kvt_llama_py)
		set(_kvt_llama_py python3)
	endif()
	add_executable(test_llama ${PROJECT_SOURCE_DIR}/tests/integration/test_llama.c
		${PROJECT_SOURCE_DIR}/tests/integration/harness.c)
	target_link_libraries(test_llama PRIVATE kvtier_llama kvtier m)
	target_include_directories(test_llama PRIVATE ${PROJECT_SOURCE_DIR}/tests/integration)
	target_compile_definitions(test_llama PRIVATE _GNU_SOURCE)
	# libllama and ggml are not built with ASan; the ASan build links them as they are (their
	# allocations go through ASan's malloc all the same, and LeakSanitizer finds none).
	kvt_add_test(engine_llama
		COMMAND $<TARGET_FILE:test_llama> $<TARGET_FILE:kvtierd> $<TARGET_FILE:kvtierctl>
			${_kvt_llama_py} ${PROJECT_SOURCE_DIR}/client/llama/gguf_writer.py
		LABELS engine TIMEOUT 900)
	kvt_add_test(engine_llama_driver
		COMMAND sh ${PROJECT_SOURCE_DIR}/tests/integration/test_llama_driver.sh
			$<TARGET_FILE:kvtier-llama> $<TARGET_FILE:kvtierd>
			${_kvt_llama_py} ${PROJECT_SOURCE_DIR}/client/llama/gguf_writer.py
		LABELS engine TIMEOUT 600)
else()
	# (no ';' in the command: kvt_add_test would split it as a CMake list)
	foreach(t engine_llama engine_llama_driver)
		kvt_add_test(${t} COMMAND sh -c
			"echo 'skipped: llama.cpp not found (KVT_LLAMA=${KVT_LLAMA}, ${KVT_LLAMA_ROOT}), scripts/common.sh installs it' && exit 77"
			LABELS engine)
	endforeach()
endif()
