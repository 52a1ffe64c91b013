# Run after linking (cmake -DMODULE=<file> -DNM=<nm> -P this-file): fails the build when the module
# carries its own copy of libstdc++. torch and the module must share one libstdc++; with a private
# copy (seen with a custom GCC in a CUDA image whose driver links libstdc++ statically) the copy's
# locale state is never initialised and formatting any error message segfaults instead of raising.
# std::locale::classic() lives only in the library itself, never in headers, so defining it is the tell.
execute_process(COMMAND ${NM} --defined-only ${MODULE} OUTPUT_VARIABLE _symbols COMMAND_ERROR_IS_FATAL ANY)
string(FIND "${_symbols}" "_ZNSt6locale7classicEv" _found)
if(NOT _found EQUAL -1)
  message(FATAL_ERROR "lqkernels: ${MODULE} links libstdc++ statically, so its error messages would "
    "crash instead of raising. Build with a compiler that links libstdc++ dynamically, e.g. "
    "CXX=/usr/bin/g++ CUDAHOSTCXX=/usr/bin/g++ pip install --no-build-isolation -e .")
endif()
